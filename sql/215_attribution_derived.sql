-- idmerge.attribution_derived: first- or last-touch attribution over the derived tables, for
-- the people they hold current (all but p_skip). Grain: one row per touchpoint value (and
-- '(not set)'), with the conversions and value credited to it; idmerge.attribution adds the
-- stale people's credit (from the live view) and computes the shares.
--
-- Same rules as idmerge.attribution (sql/220_attribution.sql): conversions are the
-- p_conversion events (report_person_events), their value the p_value property of the same
-- event (over every conversion and for a value key, the amounts stored on the conversion row,
-- migration 0016; else report_person_props, found by ingest seq), their touches the person's
-- events carrying p_touchpoint (report_person_props) from the conversion's time minus the
-- lookback to the conversion itself, by time then seq; a lookback window is one slice of
-- those sorted arrays. First touch credits the slice's first element, last touch its last;
-- an empty slice credits '(not set)'.
--
-- A query of its own, with parallel-safe functions only, so it may use parallel workers, each
-- crediting its share of the conversions and summing per touchpoint value. Every conversion
-- (no per-user rule) is credited by idmerge.attribution_derived_ranges: the people are cut into
-- ranges of distinct_id, each range's join run whole by one process (see there).

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

-- Cut points that split the people with a p_conversion row into about p_parts ranges of
-- distinct_id: the first and last such distinct_id (two probes of the primary key) and, between
-- them, evenly spaced bounds of the column's histogram (pg_stats, from the nightly job's
-- ANALYZE; none without statistics: then one range), or the given p_cuts that lie between them
-- (tests). Sorted and distinct; empty when there is no such row. Only the balance of the ranges
-- depends on the cuts, never the result.
create or replace function idmerge.attribution_id_ranges(
    p_project_id integer, p_conversion text, p_parts integer, p_cuts text[] default null
)
returns text[]
language plpgsql stable
set plan_cache_mode = force_custom_plan
-- Its caller (attribution_derived_ranges) turns index scans off for its own query; without
-- them the two probes became a bitmap scan of every conversion row (130 ms at 5M events).
set enable_indexscan = on
as $$
declare
    first_id text;
    last_id text;
    bounds text[];
begin
    select min(pe.distinct_id), max(pe.distinct_id) into first_id, last_id
    from idmerge.report_person_events as pe
    where pe.project_id = p_project_id and pe.event = p_conversion;
    if first_id is null then
        return '{}';
    end if;
    if p_cuts is not null then
        return array(
            select b
            from (select first_id as b union select c from unnest(p_cuts) as c union select last_id) as cuts
            where b >= first_id and b <= last_id
            order by b);
    end if;
    select array(
        select b from unnest(s.histogram_bounds::text::text[]) as b
        where b > first_id and b < last_id
        order by b)
    into bounds
    from pg_stats as s
    where s.schemaname = 'idmerge' and s.tablename = 'report_person_events' and s.attname = 'distinct_id';
    return array(
        select b
        from (
            select first_id as b
            union
            select bounds[1 + (i * cardinality(bounds)) / p_parts]
            from generate_series(1, p_parts - 1) as i
            where cardinality(bounds) > 0
            union
            select last_id
        ) as cuts
        where b is not null
        order by b);
end
$$;

comment on function idmerge.attribution_id_ranges(integer, text, integer, text[]) is
    'Sorted distinct_id cut points (first and last converting person included) splitting the people with a conversion row into about p_parts ranges, for idmerge.attribution_derived_ranges.';

-- Every conversion's first- or last-touch credit (no per-user rule), summed per touchpoint value:
-- idmerge.attribution_derived's query, run as a UNION ALL of ranges of distinct_id (cut points
-- from idmerge.attribution_id_ranges: [c1, c2), [c2, c3), ..., [c(n-1), cn]), each range's
-- three-way join on its own. PostgreSQL 15 has no parallel hash right join: one join over
-- everyone either hashed the conversions in one process (serial) or had the workers build a
-- shared hash table of every touchpoint row (about 150 bytes each, 820,255 rows at 5M events),
-- which doubled the CPU time. Here a Parallel Append hands each range, a whole serial join (the
-- range's conversions hashed, its touchpoint rows probing), to one process, and the processes
-- sum their ranges' credit by partial aggregates; the touchpoint rows outside the converting
-- people's span are not read at all. Partial scans are off (the minimum sizes), so a range is
-- never split between processes (each process would then hash the whole range). The query
-- text holds only positions; the cut points are bound like the arguments ($10, an array; one
-- plan per call); p_cuts replaces the histogram's (tests: any cuts give the same answer).
create or replace function idmerge.attribution_derived_ranges(
    p_project_id integer,
    p_conversion text,
    p_touchpoint text,
    p_value text,
    p_last boolean,
    p_lookback_seconds double precision,
    p_from_ms bigint,
    p_to_ms bigint,
    p_skip text[],
    p_cuts text[] default null
)
returns table (touchpoint text, conversions double precision, value double precision)
language plpgsql stable
set jit = off
set parallel_setup_cost = 100
set parallel_tuple_cost = 0.01
set min_parallel_table_scan_size = '1TB'
set min_parallel_index_scan_size = '1TB'
set enable_seqscan = off
set enable_indexscan = off
set enable_mergejoin = off
set enable_nestloop = off
set enable_sort = off
as $$
declare
    -- Six ranges for a leader and two workers: a process that finishes early takes the next.
    cuts constant text[] := idmerge.attribution_id_ranges(p_project_id, p_conversion, 6, p_cuts);
    -- Where the conversions' amounts come from: 'amounts' (the value is a value key, at
    -- value_position), 'none' (no value property), or 'props'.
    value_position integer := (
        select array_position(s.value_keys, p_value) from idmerge.report_state as s where s.project_id = p_project_id);
    value_source constant text := case
        when p_value is null then 'none' when value_position is not null then 'amounts' else 'props' end;
    ranges text[] := '{}';
    lower_cut text;
    upper_cut text;
    upper_op text;
begin
    if cardinality(cuts) = 0 then
        return;
    end if;
    for i in 1..greatest(cardinality(cuts) - 1, 1) loop
        -- The range's bounds, for each table alias: the cuts are bound as parameter $10 (an
        -- array); only their positions, integers, are written into the text. The last range
        -- includes its upper cut.
        lower_cut := format('$10[%s]', i);
        upper_cut := format('$10[%s]', least(i + 1, cardinality(cuts)));
        upper_op := case when i >= cardinality(cuts) - 1 then '<=' else '<' end;
        -- The amount and touch of each conversion, as in idmerge.attribution_derived; the
        -- conversions unnested in the select list (a ProjectSet, cheaper than a lateral
        -- function scan per person). $1 project, $2 conversion, $3 touchpoint, $4 value,
        -- $5 last touch, $6 lookback, $7 from, $8 to, $9 people to skip, $10 the cuts, $11
        -- the value key's position in the value keys. The amount comes from the conversion
        -- row's amounts when the value is one of the value keys (the key's column of the
        -- [event][key] array, unnested beside the times: no join; a row without amounts has
        -- none but 0), is 0 without a value property, and else is the value property's
        -- element of the person's report_person_props row of that key, found by seq. Each row
        -- names its range, for the sums below.
        ranges := ranges || format($range$
            select
                %8$s as range_no,
                %3$s as amount,
                idmerge.attribution_touch(u.touch_times, u.touch_seqs, u.touch_vals, u.ms, u.seq, $6, $5) as touch_value
            from (
                select
                    %4$s
                    tp.times as touch_times,
                    tp.seqs as touch_seqs,
                    tp.vals as touch_vals,
                    unnest(pe.times) as ms,
                    unnest(pe.seqs) as seq%5$s
                from (
                    select pe.distinct_id, pe.times, pe.seqs%6$s
                    from idmerge.report_person_events as pe
                    where pe.project_id = $1 and pe.event = $2 and pe.distinct_id <> all($9) and %1$s
                ) as pe%7$s
                left join (
                    select tp.distinct_id, tp.times, tp.seqs, tp.vals
                    from idmerge.report_person_props as tp
                    where tp.project_id = $1 and tp.key = $3 and %2$s
                ) as tp on tp.distinct_id = pe.distinct_id
            ) as u
            where ($7::bigint is null or u.ms >= $7) and ($8::bigint is null or u.ms < $8)$range$,
            format('pe.distinct_id >= %s and pe.distinct_id %s %s', lower_cut, upper_op, upper_cut),
            format('tp.distinct_id >= %s and tp.distinct_id %s %s', lower_cut, upper_op, upper_cut),
            case value_source
                when 'amounts' then 'coalesce(u.amount, 0)'
                when 'none' then '0::double precision'
                else 'idmerge.attribution_amount(u.value_vals[array_position(u.value_seqs, u.seq)])'
            end,
            case when value_source = 'props' then E'vp.seqs as value_seqs,\n                    vp.vals as value_vals,' else '' end,
            case when value_source = 'amounts' then E',\n                    unnest(pe.amounts) as amount' else '' end,
            case when value_source = 'amounts' then ', pe.amounts[:][$11:$11] as amounts' else '' end,
            case when value_source = 'props' then format($join$
                left join (
                    select vp.distinct_id, vp.seqs, vp.vals
                    from idmerge.report_person_props as vp
                    where vp.project_id = $1 and vp.key = $4 and %s
                ) as vp on vp.distinct_id = pe.distinct_id$join$,
                format('vp.distinct_id >= %s and vp.distinct_id %s %s', lower_cut, upper_op, upper_cut))
            else '' end,
            i);
    end loop;
    return query execute format($query$
        with credited as (%s
        ),
        -- Per range and touchpoint value: one process reads a range whole, in the same order
        -- every time, so each sum is the same double every time; then the ranges' sums are
        -- added in range order. Summed by whichever process took which ranges, the doubles
        -- came out with other last digits from one run to the next.
        range_sums as (
            select c.range_no, c.touch_value, sum(1.0::double precision) as conversions,
                   sum(1.0::double precision * c.amount) as value
            from credited as c
            group by c.range_no, c.touch_value
        ),
        final as (
            select r.touch_value as touchpoint, sum(r.conversions order by r.range_no) as conversions,
                   sum(r.value order by r.range_no) as value
            from range_sums as r
            group by r.touch_value
        )
        select * from final$query$, array_to_string(ranges, E'\n            union all'))
    using p_project_id, p_conversion, p_touchpoint, p_value, p_last, p_lookback_seconds, p_from_ms, p_to_ms, p_skip,
        cuts, value_position;
end
$$;

comment on function idmerge.attribution_derived_ranges(integer, text, text, text, boolean, double precision, bigint, bigint, text[], text[]) is
    'First- or last-touch credit of every conversion over the derived report tables (all people but p_skip), by ranges of distinct_id run in parallel: conversions and value per touchpoint value. See idmerge.attribution_derived.';

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

    -- Every conversion in the date range: by ranges of people, in parallel.
    return query
    select r.touchpoint, r.conversions, r.value
    from idmerge.attribution_derived_ranges(
        p_project_id, p_conversion, p_touchpoint, p_value, p_last, p_lookback_seconds, p_from_ms, p_to_ms, p_skip) as r;
end
$$;

comment on function idmerge.attribution_derived(integer, text, text, text, boolean, double precision, text, bigint, bigint, text[]) is
    'First- or last-touch attribution over the derived report tables for the people they hold current (all but p_skip): conversions and value per touchpoint value. See idmerge.attribution.';
