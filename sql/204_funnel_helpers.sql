-- Helpers of the set-based funnel (sql/205_funnel_derived.sql): a planner fence and an exact
-- median from bigint milliseconds.

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
