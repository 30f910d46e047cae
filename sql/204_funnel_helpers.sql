-- Helpers of the set-based funnel (sql/205_funnel_derived.sql): a planner fence, an exact
-- median from bigint milliseconds, and one from a band of them around the median.

-- idmerge.planner_fence: true. A subquery whose select list calls it stays a subquery level
-- of its own instead of being merged into the query above (PostgreSQL 15 does not pull up a
-- subquery with a volatile function in its select list), so a column computed there is
-- computed once per row, not copied into each expression that reads it. The call is inlined
-- to the constant true once the levels are settled, so it costs nothing per row; unlike
-- offset 0 (the usual fence), it leaves the level below a Gather, so parallel workers
-- compute it.
create or replace function idmerge.planner_fence()
returns boolean
language sql volatile parallel safe
as $$ select true $$;

comment on function idmerge.planner_fence() is
    'true; in a subquery''s select list, keeps the subquery a level of its own (parallel safe, unlike offset 0). See sql/205_funnel_derived.sql.';

-- idmerge.report_median_fractions and idmerge.report_median_seconds: percentile_cont(0.5) of
-- seconds s = ms / 1000.0 (double precision), from a sort of the bigint milliseconds ms, which
-- costs less than one of the doubles:
--   percentile_disc(idmerge.report_median_fractions()) within group (order by ms)
-- gives the two middle values (for n values, rows floor((n - 1) / 2) and ceil((n - 1) / 2),
-- from 0: percentile_disc(p) is row ceil(p * n) from 1, and p = 0.5 + 2^-40 moves that row
-- by one exactly when n is even, for n below 2^39), and idmerge.report_median_seconds
-- interpolates them as percentile_cont does: lo + 0.5 * (hi - lo), in double precision, of the
-- values as seconds. Dividing by 1000 keeps the order, so the two values are the ones
-- percentile_cont picks, and the result is the same double (null for no values).
create or replace function idmerge.report_median_fractions()
returns double precision[]
language sql immutable parallel safe
return array[0.5, 0.5 + 2::double precision ^ -40];

comment on function idmerge.report_median_fractions() is
    'The fractions whose percentile_disc are the two middle values of a sorted list: {0.5, 0.5 + 2^-40}. See idmerge.report_median_seconds.';

create or replace function idmerge.report_median_seconds(p_middle_ms bigint[])
returns double precision
language sql immutable parallel safe
return p_middle_ms[1]::double precision / 1000
    + 0.5 * (p_middle_ms[2]::double precision / 1000 - p_middle_ms[1]::double precision / 1000);

comment on function idmerge.report_median_seconds(bigint[]) is
    'percentile_cont(0.5) of seconds (ms / 1000.0), from the two middle milliseconds given by percentile_disc(idmerge.report_median_fractions()): the same double.';

-- idmerge.report_collect_ms: the values, as one array (in no particular order), combinable:
-- each parallel worker appends its rows' values (in place on its expanded array) and the
-- leader concatenates the few arrays the workers send, so the values cross the Gather as
-- one datum per worker instead of one row each. The funnel (sql/205) collects only the
-- values in a narrow band around each median this way.
create or replace aggregate idmerge.report_collect_ms(bigint) (
    sfunc = array_append,
    stype = bigint[],
    combinefunc = array_cat,
    initcond = '{}',
    parallel = safe
);

comment on aggregate idmerge.report_collect_ms(bigint) is
    'The values as one bigint[] (unordered; parallel: combined by array_cat). See idmerge.report_band_median_seconds.';

-- idmerge.report_band_holds_median and idmerge.report_band_median_seconds: percentile_cont(0.5)
-- of n values as seconds (ms / 1000.0), from a band: p_below, the number of values below the
-- band's lower bound, and p_band, every value within the band (bounds included, any order).
-- The two middle values are rows floor((n - 1) / 2) and floor(n / 2), from 0, of the sorted
-- values; the band holds both when p_below <= floor((n - 1) / 2) and p_below +
-- cardinality(p_band) > floor(n / 2), and then they are the one or two rows of the sorted band
-- from row floor((n - 1) / 2) - p_below (a bounded sort: only the rows up to them are kept).
-- The median is interpolated from them as idmerge.report_median_seconds does: the same double
-- as percentile_cont (null for no values).
create or replace function idmerge.report_band_holds_median(p_count bigint, p_below bigint, p_band bigint[])
returns boolean
language sql immutable parallel safe
return p_count = 0 or (p_below <= (p_count - 1) / 2 and p_below + coalesce(cardinality(p_band), 0) > p_count / 2);

comment on function idmerge.report_band_holds_median(bigint, bigint, bigint[]) is
    'Whether a band (p_below values under it, p_band the values in it) holds the two middle values of p_count values. See idmerge.report_band_median_seconds.';

create or replace function idmerge.report_band_median_seconds(p_count bigint, p_below bigint, p_band bigint[])
returns double precision
language sql immutable parallel safe
return (
    select idmerge.report_median_seconds(array[min(s.b), max(s.b)])
    from (
        select b
        from unnest(p_band) as b
        order by b
        offset greatest(0, (p_count - 1) / 2 - p_below)
        limit p_count / 2 - (p_count - 1) / 2 + 1
    ) as s (b)
    where p_count > 0 and idmerge.report_band_holds_median(p_count, p_below, p_band)
);

comment on function idmerge.report_band_median_seconds(bigint, bigint, bigint[]) is
    'percentile_cont(0.5) of p_count values as seconds (ms / 1000.0), from a band holding the middle values (p_below values under it, p_band the values in it); null for no values, or when the band does not hold them.';
