-- idmerge.attribution_derived: first- or last-touch attribution over the derived tables, for
-- the people they hold current (all but p_skip). Grain: one row per touchpoint value (and
-- '(not set)'), with the conversions and value credited to it; idmerge.attribution adds the
-- stale people's credit (from the live view) and computes the shares.
--
-- Same rules as idmerge.attribution (sql/220_attribution.sql): conversions are the
-- p_conversion events (report_person_events), their value the p_value property of the same
-- event (report_person_props, found by ingest seq), their touches the person's events
-- carrying p_touchpoint (report_person_props) from the conversion's time minus the lookback
-- to the conversion itself, by time then seq; a lookback window is one slice of those sorted
-- arrays. First touch credits the slice's first element, last touch its last; an empty slice
-- credits '(not set)'.
--
-- A query of its own, with parallel-safe functions only, so it may use parallel workers, each
-- crediting its share of the conversions and summing per touchpoint value.

-- The touchpoint value credited by first touch (p_last false) or last touch of a conversion
-- at (p_ms, p_seq), from the person's touches (p_times, p_seqs, p_vals: sorted by time, then
-- seq), or '(not set)'. The lookback window is one slice: from lo, the first touch at or after
-- the conversion's time minus the lookback, to hi, the last one at or before the conversion by
-- (time, seq). width_bucket counts the elements <= a bound, so hi0 (the last at or before the
-- conversion's time) is one search; hi is hi0 unless the touch at hi0 is at the conversion's
-- time with a later seq, and then a second search among the touches at that time, by seq.
-- First touch needs no hi: its slice is not empty when the touch at lo is earlier than the
-- conversion, or at its time with a seq no later (the touches at one time are sorted by seq).
-- One SQL expression, inlined where it is called: with plain columns as arguments, the
-- repeated bounds cost a few binary searches over small arrays, in the parallel workers.
create or replace function idmerge.attribution_touch(
    p_times bigint[], p_seqs bigint[], p_vals jsonb[], p_ms bigint, p_seq bigint,
    p_lookback_seconds double precision, p_last boolean
)
returns text
language sql immutable parallel safe as $$
    select case
        when not p_last then
            case
                when width_bucket(p_ms, p_times)
                        >= width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1
                    and (p_times[width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1] < p_ms
                         or p_seqs[width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1] <= p_seq)
                    then p_vals[width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1] #>> '{}'
                else '(not set)'
            end
        else
            case
                when width_bucket(p_ms, p_times) < width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1
                    then '(not set)'
                when p_times[width_bucket(p_ms, p_times)] < p_ms or p_seqs[width_bucket(p_ms, p_times)] <= p_seq
                    then p_vals[width_bucket(p_ms, p_times)] #>> '{}'
                -- The touch at hi0 is at the conversion's time with a later seq: the touches at
                -- that time start after the width_bucket(p_ms - 1) earlier ones, sorted by seq.
                when width_bucket(p_ms - 1, p_times)
                        + width_bucket(p_seq, p_seqs[width_bucket(p_ms - 1, p_times) + 1:width_bucket(p_ms, p_times)])
                        >= width_bucket(ceil(p_ms - p_lookback_seconds * 1000)::bigint - 1, p_times) + 1
                    then p_vals[width_bucket(p_ms - 1, p_times)
                        + width_bucket(p_seq, p_seqs[width_bucket(p_ms - 1, p_times) + 1:width_bucket(p_ms, p_times)])]
                        #>> '{}'
                else '(not set)'
            end
    end
$$;

create or replace function idmerge.attribution_derived(
    p_project_id integer,
    p_conversion text,
    p_touchpoint text,
    p_value text,
    p_last boolean,
    p_lookback_seconds double precision,
    p_per_user text,
    p_from_ms bigint,
    p_to_ms bigint,
    p_skip text[]
)
returns table (touchpoint text, conversions double precision, value double precision)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set jit = off
-- Parallel workers, the derived rows read by bitmap scans (each name's or key's rows lie
-- together in the heap, which a full scan or an index scan in another order does not use),
-- and the credit summed by hashing (a handful of touchpoint values, which the planner cannot
-- know: it estimates one group per conversion and would sort them).
set parallel_setup_cost = 100
set parallel_tuple_cost = 0.01
set enable_seqscan = off
set enable_indexscan = off
set enable_sort = off
as $$
#variable_conflict use_column
begin
    -- One conversion per person: the first or last one in the date range, by time then seq.
    if p_per_user is not null then
        return query
        with people as (
            select
                pe.distinct_id,
                pe.times as conversion_times,
                pe.seqs as conversion_seqs,
                vp.seqs as value_seqs,
                vp.vals as value_vals,
                tp.times as touch_times,
                tp.seqs as touch_seqs,
                tp.vals as touch_vals
            from idmerge.report_person_events as pe
            left join idmerge.report_person_props as vp
                on vp.project_id = p_project_id and vp.key = p_value and vp.distinct_id = pe.distinct_id
            left join idmerge.report_person_props as tp
                on tp.project_id = p_project_id and tp.key = p_touchpoint and tp.distinct_id = pe.distinct_id
            where pe.project_id = p_project_id
                and pe.event = p_conversion
                and pe.distinct_id <> all(p_skip)
        ),
        conversion_rows as (
            select
                p.distinct_id,
                unnest(p.conversion_times) as ms,
                unnest(p.conversion_seqs) as seq,
                p.value_seqs,
                p.value_vals,
                p.touch_times,
                p.touch_seqs,
                p.touch_vals
            from people as p
        ),
        converted as (
            select c.*
            from (
                select
                    c.*,
                    row_number() over (
                        partition by c.distinct_id
                        order by case when p_per_user = 'first' then c.ms else -c.ms end,
                                 case when p_per_user = 'first' then c.seq else -c.seq end
                    ) as nth
                from conversion_rows as c
                where (p_from_ms is null or c.ms >= p_from_ms) and (p_to_ms is null or c.ms < p_to_ms)
            ) as c
            where c.nth = 1
        ),
        credited as (
            select
                idmerge.attribution_amount(c.value_vals[array_position(c.value_seqs, c.seq)]) as amount,
                idmerge.attribution_touch(c.touch_times, c.touch_seqs, c.touch_vals, c.ms, c.seq, p_lookback_seconds, p_last)
                    as touch_value
            from converted as c
        ),
        final as (
            select c.touch_value as touchpoint, sum(1.0::double precision) as conversions,
                   sum(1.0::double precision * c.amount) as value
            from credited as c
            group by c.touch_value
        )
        select * from final;
        return;
    end if;

    -- Every conversion in the date range: one level, so the parallel workers compute each
    -- conversion's credit and sum it per touchpoint value (partial aggregates).
    return query
    with credited as (
        select
            idmerge.attribution_amount(vp.vals[array_position(vp.seqs, u.seq)]) as amount,
            idmerge.attribution_touch(tp.times, tp.seqs, tp.vals, u.ms, u.seq, p_lookback_seconds, p_last) as touch_value
        from idmerge.report_person_events as pe
        cross join lateral unnest(pe.times, pe.seqs) as u (ms, seq)
        left join idmerge.report_person_props as vp
            on vp.project_id = p_project_id and vp.key = p_value and vp.distinct_id = pe.distinct_id
        left join idmerge.report_person_props as tp
            on tp.project_id = p_project_id and tp.key = p_touchpoint and tp.distinct_id = pe.distinct_id
        where pe.project_id = p_project_id
            and pe.event = p_conversion
            and pe.distinct_id <> all(p_skip)
            and (p_from_ms is null or u.ms >= p_from_ms)
            and (p_to_ms is null or u.ms < p_to_ms)
    ),
    final as (
        select c.touch_value as touchpoint, sum(1.0::double precision) as conversions,
               sum(1.0::double precision * c.amount) as value
        from credited as c
        group by c.touch_value
    )
    select * from final;
end
$$;

comment on function idmerge.attribution_derived(integer, text, text, text, boolean, double precision, text, bigint, bigint, text[]) is
    'First- or last-touch attribution over the derived report tables for the people they hold current (all but p_skip): conversions and value per touchpoint value. See idmerge.attribution.';
