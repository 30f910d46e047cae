-- idmerge.funnel_derived: the set-based funnel over the derived tables, for the common shape:
-- counting uniques, specific order, no exclusion, no property held constant, no breakdown,
-- steps of pairwise distinct event names. idmerge.funnel routes such queries here and every
-- other one to the engine (idmerge.funnel_attempts).
--
-- Grain: one row per step, as idmerge.funnel's overall rows (count, in_progress, median and
-- average seconds from the previous step). People listed in p_skip (the stale ones,
-- sql/150_report_tables.sql) are read from the live view through the engine
-- (idmerge.funnel_attempts with p_people) and added.
--
-- Same rules as the engine (decisions.md "Funnels"; sql/200_funnel_attempts.sql), which in
-- this shape reduce to times alone:
--   * entry: the person's first step-1 event in [from_date, to_date] (F9: uniques enter once);
--     the window runs from it (F3);
--   * step k: the earliest step-k event at or after step k-1's time minus the grace (F6),
--     and at most the window's end. Steps have distinct names, so no event can fill two
--     steps and ingest seq never decides which time is taken.
-- Each row of report_person_events carries its person's whole timeline (person_keys: the
-- times of each event name as one sorted run, offset by the name's number in
-- report_event_names times 2^42), so the steps are computed from the rows of step 2's event
-- alone, one per person, with no join (whoever reaches any step after the first has a step-2
-- event): "the earliest time of name c at or after b" is one binary search,
-- width_bucket(c * 2^42 + b - 1, person_keys) counting the keys below it (times are whole
-- milliseconds). A key of a later name, or none, yields a time of 2^42 or more, or null:
-- never in the window. One pass computes every step's chain and one
-- aggregate every step's count and times to convert.
--
-- Parallel workers read the step-2 rows and compute each row's chain and times (one fenced
-- subquery level per step, sql/204). Without stale people they also aggregate: counts, sums,
-- and for each step's median only the values in a band around it, found by a sample first
-- (see below), so the leader receives one row per worker and sorts the bands alone. Before
-- (session 4) the leader received every row and sorted every value, which bounded the query;
-- a combinable aggregate of every value cost the leader more than those sorts (BENCHMARKS.md).
-- With stale people the leader aggregates the rows and the engine's attempts, as before.
--
-- The engine (a PL/pgSQL function, parallel unsafe) runs first, for the stale people alone,
-- and its attempts are passed to the query as arrays, so the query over the derived rows can
-- use parallel workers (functions it calls are parallel safe).

create or replace function idmerge.funnel_derived(
    p_project_id integer,
    p_steps text[],
    p_window_seconds double precision,
    p_from_date date,
    p_to_date date,
    p_grace_seconds double precision,
    p_skip text[]
)
returns table (
    step integer,
    event text,
    count bigint,
    in_progress bigint,
    median_seconds_to_convert double precision,
    average_seconds_to_convert double precision
)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set jit = off
-- Parallel workers for the step-2 rows, read by a bitmap scan: in the heap they lie together
-- (written in (event, person) order), so reading them by an index in another order, or the
-- whole table, costs more than the planner thinks.
set parallel_setup_cost = 100
set parallel_tuple_cost = 0.01
set enable_seqscan = off
set enable_indexscan = off
as $$
declare
    steps_count integer := cardinality(p_steps);
    newest_ms bigint;
    from_ms bigint := idmerge.report_ms(p_from_date::timestamp at time zone 'UTC');
    to_ms bigint := idmerge.report_ms((p_to_date + 1)::timestamp at time zone 'UTC');
    window_ms double precision := p_window_seconds * 1000;
    grace_ms double precision := p_grace_seconds * 1000;
    block constant bigint := 4398046511104;  -- 2^42
    blocks bigint[];
    engine_reached integer[];
    engine_seconds double precision[];
    engine_entries bigint := 0;
    engine_in_progress bigint := 0;
    sql text;
    entries text;
    open_entries text;
    chain text;
    expr text;
    rows_sql text;
    reached text;
    window_sql text;
    -- The window and the grace in whole milliseconds, for bigint arithmetic (null when not).
    window_whole_ms bigint := case when window_ms = trunc(window_ms) then window_ms::bigint end;
    grace_whole_ms bigint := case when grace_ms = trunc(grace_ms) and abs(grace_ms) < 4398046511104 then grace_ms::bigint end;
    -- Medians from bigint milliseconds: when no engine attempts (seconds) are added.
    by_ms boolean := coalesce(cardinality(p_skip), 0) = 0;
    aggregates text;
    per_step text;
    j integer;
    -- Without engine attempts, the medians from a band around each (see below): its bounds
    -- per step ($16, $17), then each step's count, median and average ($18 to $20) and the
    -- completions still open ($21), computed first; $22 the sample's percentage of pages, $23
    -- its seed.
    wide constant bigint := 4611686018427387904;  -- 2^62: beyond any difference of times
    band_lo bigint[];
    band_hi bigint[];
    band_ok boolean;
    step_counts bigint[];
    step_medians double precision[];
    step_averages double precision[];
    open_count bigint;
    sample_percent double precision;
    sample_seed double precision;
    sample_rows bigint;
    sample_pages bigint;
    sample record;
    band_test text;
    d integer;
begin
    -- The newest event time: the tables' own when nothing was stored since they were built
    -- (as in idmerge.funnel), else report_newest_ms (which also reads the events since).
    select s.newest_ms into newest_ms
    from idmerge.report_state as s
    inner join idmerge.projects as p on p.id = s.project_id
    where s.project_id = p_project_id and p.last_seq <= s.as_of_seq;
    if not found then
        newest_ms := idmerge.report_newest_ms(p_project_id);
    end if;
    -- Each step's block of timeline keys: its name's number times 2^42 (null for a name the
    -- tables never saw: no one has such an event).
    select array_agg(n.id::bigint * block order by s.k) into blocks
    from unnest(p_steps) with ordinality as s (name, k)
    left join idmerge.report_event_names as n on n.project_id = p_project_id and n.event = s.name;

    -- The stale people, through the engine over the live view: their attempts' reached step
    -- and times between steps (one row of steps_count values per attempt).
    if cardinality(p_skip) > 0 then
        select coalesce(array_agg(a.reached), '{}'), array_agg(a.step_seconds), count(*),
               count(*) filter (where a.in_progress)
            into engine_reached, engine_seconds, engine_entries, engine_in_progress
        from idmerge.funnel_attempts(
            (select name from idmerge.projects where id = p_project_id), p_steps, p_window_seconds, p_from_date,
            p_to_date, 'uniques', 'specific', '[]', null, null, 'step1', p_grace_seconds, p_skip) as a
        where a.counts_overall;
    end if;

    -- Entries: people with a step-1 event in the date range; open: their window is still
    -- open at the newest event ($8). Read from the step-1 rows' own times.
    -- All time: everyone with a step-1 row (report_event_names counts them) but the
    -- skipped people.
    if from_ms is null and to_ms is null then
        entries := 'coalesce((select n.people from idmerge.report_event_names as n
                                 where n.project_id = $1 and n.event = $2[1]), 0)
            - (select count(*) from idmerge.report_person_events as r
               where r.project_id = $1 and r.event = $2[1] and r.distinct_id = any($3))';
        open_entries := 'select count(*) from idmerge.report_person_events as r
            where r.project_id = $1 and r.event = $2[1] and r.distinct_id <> all($3)
                and r.first_ms >= ceil($8 - $6)::bigint';
    else
        entries := 'select q.t1
            from (
                select r.times[case when $4::bigint is null then 1 else width_bucket($4::bigint - 1, r.times) + 1 end] as t1
                from idmerge.report_person_events as r
                where r.project_id = $1 and r.event = $2[1] and r.distinct_id <> all($3)
            ) as q
            where q.t1 is not null and ($5::bigint is null or q.t1 < $5::bigint)';
        open_entries := 'select count(*) from (' || entries || ') as e where e.t1 + $6 >= $8';
        entries := 'select count(*) from (' || entries || ') as e';
    end if;

    if steps_count = 1 then
        per_step := 'select 1 as step, 0::bigint as count, null::double precision as median,
                            null::double precision as average where false';
        open_entries := '0';
        aggregates := 'select 0::bigint as open';
    else
        -- The chain over the step-2 rows: m1 the entry time, mk the step-k time ($13[k]: step
        -- k's block of keys), one subquery level per step, each reading the level below's
        -- columns, so every time is searched once. Each level carries idmerge.planner_fence()
        -- (sql/204) to stay a level of its own: pulled up, the levels' expressions would be
        -- copied into every reference, nesting the searches. offset 0 would do that too, but
        -- keeps the levels above the Gather, in the leader; the fence keeps them in the
        -- parallel workers. The bottom level copies person_keys once (|| '{}' returns its
        -- operand detoasted): each search reads the array twice, and an array stored inline
        -- with a short header is copied at every read.
        chain := 'select r.person_keys || ''{}''::bigint[] as keys, idmerge.planner_fence() as fence
             from idmerge.report_person_events as r{sample}
             where r.project_id = $1 and r.event = $2[2]'
            || case when cardinality(p_skip) > 0 then ' and r.distinct_id <> all($3)' else '' end;
        for j in 1 .. steps_count loop
            if j = 1 then
                expr := 'q.keys[width_bucket($13[1] + coalesce($4::bigint, 0) - 1, q.keys) + 1] - $13[1]';
            elsif grace_whole_ms is not null then
                -- Whole milliseconds of grace: ceil(m - grace) = m - grace, in bigint.
                expr := format('q.keys[width_bucket($13[%1$s] - 1 - $15 + q.m%2$s, q.keys) + 1] - $13[%1$s]', j, j - 1);
            else
                expr := format('q.keys[width_bucket($13[%1$s] + ceil(q.m%2$s - $7)::bigint - 1, q.keys) + 1] - $13[%1$s]', j, j - 1);
            end if;
            chain := format('select q.keys%1$s, %2$s as m%3$s, idmerge.planner_fence() as fence
                 from (%4$s) as q',
                (select string_agg(', q.m' || i, '') from generate_series(1, j - 1) as i), expr, j, chain);
        end loop;
        -- One row per derived person with a step-2 event, then one per engine attempt: vk the
        -- milliseconds from step k-1 when step k was reached (null otherwise; sk, the same in
        -- seconds, when engine attempts are added), open whether the person
        -- completed the funnel with the window still open (engine attempts count their own
        -- in_progress). A window of whole milliseconds ($14) compares in bigint. Also a
        -- fenced level, so the workers compute these once per row.
        window_sql := case when window_whole_ms is not null then '$14' else '$6' end;
        reached := format('q.m1 < coalesce($5::bigint, %s)', block);
        rows_sql := '';
        for j in 2 .. steps_count loop
            reached := reached || format(' and q.m%s <= q.m1 + %s', j, window_sql);
            if by_ms then
                rows_sql := rows_sql || format('case when %1$s then q.m%2$s - q.m%3$s end as v%2$s, ', reached, j, j - 1);
            else
                rows_sql := rows_sql || format(
                    'case when %1$s then (q.m%2$s - q.m%3$s)::double precision / 1000 end as s%2$s, ', reached, j, j - 1);
            end if;
        end loop;
        rows_sql := format('select %s%s and q.m1 + %s >= $8 as open, idmerge.planner_fence() as fence from (%s) as q',
            rows_sql, reached, window_sql, chain);
        if not by_ms then
            rows_sql := rows_sql || format('
                union all
                select %s, false, true from generate_subscripts($9, 1) as i',
                (select string_agg(format('case when $9[i] >= %1$s then $10[i][%1$s] end', k), ', ')
                 from generate_series(2, steps_count) as k));
        end if;
        if by_ms then
            -- The medians from bands. Sorting every value in the leader, after the workers
            -- have sent each row, bounded the query; so a first, small query takes a sample of
            -- the step-2 rows (TABLESAMPLE SYSTEM: about 3,000 rows, whole pages) and puts a
            -- band around each step's median: the sample's values 3 * sqrt(m) ranks either
            -- side of its middle (m values). The main query then counts, in the workers, each
            -- step's values, those below its band, and their sum, and collects the values
            -- within it (idmerge.report_collect_ms): partial aggregates, so the leader
            -- receives one row per worker and sorts only the band's values. When a band does
            -- not hold the two middle values (a sample far off), the query runs again with
            -- bands holding every value. Either way the median is the exact one
            -- (idmerge.report_band_median_seconds, sql/204): the same double as
            -- percentile_cont of the seconds. With few step-2 rows, or a sample that would
            -- read too many pages of other names, the bands hold every value from the start.
            -- The average is the exact sum of the milliseconds over 1000 times their count,
            -- rounded once.
            band_lo := array_fill(-wide, array[steps_count]);
            band_hi := array_fill(wide, array[steps_count]);
            -- The step-2 rows (none for a name the tables never saw).
            sample_rows := coalesce((
                select n.people from idmerge.report_event_names as n
                where n.project_id = p_project_id and n.event = p_steps[2]), 0);
            select c.relpages into sample_pages from pg_class as c where c.oid = 'idmerge.report_person_events'::regclass;
            sample_percent := least(100, 100.0 * 3000 / greatest(sample_rows, 1));
            -- The same sample until the tables are refreshed (REPEATABLE, seeded by their
            -- as_of_seq): its pages, mostly of other names, are read from disk once and then
            -- found in the shared buffers, where a new sample each time read about 600 other
            -- pages (45 to 55 ms at 5M events, a quarter of the funnel). A new nightly run
            -- draws another sample, so a sample that misses a median does not stay.
            sample_seed := (select s.as_of_seq from idmerge.report_state as s where s.project_id = p_project_id);
            -- Test hook (Tests/IDMergeCoreTests/ReportDerivedTests.swift): 'sample' samples
            -- every row whatever the sizes, with bands one rank either side of the middle;
            -- 'miss' starts from bands that hold no value.
            band_test := current_setting('idmerge.funnel_band_test', true);
            if band_test = 'sample' then
                sample_percent := 100;
            elsif band_test = 'miss' then
                band_lo := array_fill(wide - 1, array[steps_count]);
                sample_percent := null;
            elsif sample_rows < 50000 or sample_pages * sample_percent / 100 > sample_rows / 20 then
                sample_percent := null;
            end if;
            if sample_percent is not null then
                for sample in execute format(
                    'select s.k + 1 as step, array_agg(s.v order by s.v) as vals
                     from (%s) as x
                     cross join lateral unnest(array[%s]) with ordinality as s (v, k)
                     where s.v is not null
                     group by s.k',
                    replace(rows_sql, '{sample}', ' tablesample system ($22) repeatable ($23)'),
                    (select string_agg('x.v' || k, ', ') from generate_series(2, steps_count) as k))
                    using p_project_id, p_steps, coalesce(p_skip, '{}'), from_ms, to_ms, window_ms, grace_ms, newest_ms,
                          engine_reached, engine_seconds, engine_entries, engine_in_progress, blocks, window_whole_ms,
                          grace_whole_ms, band_lo, band_hi, step_counts, step_medians, step_averages, open_count,
                          sample_percent, coalesce(sample_seed, 0)
                loop
                    j := cardinality(sample.vals);
                    d := case when band_test = 'sample' then 1 else ceil(3 * sqrt(j)) end;
                    if j >= 100 or band_test = 'sample' then
                        band_lo[sample.step] := sample.vals[greatest(1, j / 2 - d)];
                        band_hi[sample.step] := sample.vals[least(j, j / 2 + 1 + d)];
                    end if;
                end loop;
            end if;
            aggregates := format('select %s and true as ok, array[null, %s]::bigint[] as counts,
                    array[null, %s]::double precision[] as medians, array[null, %s]::double precision[] as averages,
                    count(*) filter (where x.open) as open
                from (%s) as x',
                (select string_agg(format(
                    'idmerge.report_band_holds_median(count(x.v%1$s), count(*) filter (where x.v%1$s < $16[%1$s]),
                         idmerge.report_collect_ms(x.v%1$s) filter (where x.v%1$s between $16[%1$s] and $17[%1$s]))', k), ' and ')
                 from generate_series(2, steps_count) as k),
                (select string_agg(format('count(x.v%s)', k), ', ') from generate_series(2, steps_count) as k),
                (select string_agg(format(
                    'idmerge.report_band_median_seconds(count(x.v%1$s), count(*) filter (where x.v%1$s < $16[%1$s]),
                         idmerge.report_collect_ms(x.v%1$s) filter (where x.v%1$s between $16[%1$s] and $17[%1$s]))', k), ', ')
                 from generate_series(2, steps_count) as k),
                (select string_agg(format('(sum(x.v%1$s) / (1000 * nullif(count(x.v%1$s), 0)))::double precision', k), ', ')
                 from generate_series(2, steps_count) as k),
                replace(rows_sql, '{sample}', ''));
            loop
                execute aggregates into band_ok, step_counts, step_medians, step_averages, open_count
                    using p_project_id, p_steps, coalesce(p_skip, '{}'), from_ms, to_ms, window_ms, grace_ms, newest_ms,
                          engine_reached, engine_seconds, engine_entries, engine_in_progress, blocks, window_whole_ms,
                          grace_whole_ms, band_lo, band_hi;
                exit when band_ok;
                band_lo := array_fill(-wide, array[steps_count]);
                band_hi := array_fill(wide, array[steps_count]);
            end loop;
            aggregates := 'select $21::bigint as open';
            per_step := format('select k as step, $18[k] as count, $19[k] as median, $20[k] as average
                from generate_series(2, %s) as k', steps_count);
        else
            -- With engine attempts: percentile_cont of the seconds, and the sum of the seconds
            -- over their count (the same double as avg).
            aggregates := format('select %s, count(*) filter (where x.open) as open from (%s) as x',
                (select string_agg(format(
                    'count(x.s%1$s) as count%1$s,
                     percentile_cont(0.5) within group (order by x.s%1$s) as median%1$s,
                     sum(x.s%1$s) / count(x.s%1$s) as average%1$s', k), ', ')
                 from generate_series(2, steps_count) as k),
                replace(rows_sql, '{sample}', ''));
            per_step := 'select v.* from aggregated as a cross join lateral (values '
                || (select string_agg(format('(%1$s, a.count%1$s, a.median%1$s, a.average%1$s)', k), ', ')
                    from generate_series(2, steps_count) as k)
                || ') as v (step, count, median, average)';
        end if;
    end if;

    sql := format('
        with aggregated as (%1$s
        ),
        per_step as (%2$s
        ),
        entered as (
            select (%3$s) + $11 as count,
                   (%4$s) - (select aggregated.open from aggregated) + $12 as in_progress
        )
        select k, $2[k], case when k = 1 then entered.count else coalesce(per_step.count, 0) end,
               entered.in_progress, per_step.median, per_step.average
        from generate_subscripts($2, 1) as k
        cross join entered
        left join per_step on per_step.step = k
        order by k',
        aggregates, per_step, entries, open_entries);

    return query execute sql
        using p_project_id, p_steps, coalesce(p_skip, '{}'), from_ms, to_ms, window_ms, grace_ms, newest_ms,
              engine_reached, engine_seconds, engine_entries, engine_in_progress, blocks, window_whole_ms, grace_whole_ms,
              band_lo, band_hi, step_counts, step_medians, step_averages, open_count;
end
$$;

comment on function idmerge.funnel_derived(integer, text[], double precision, date, date, double precision, text[]) is
    'Set-based funnel over idmerge.report_person_events (uniques, specific order, distinct step names, no exclusion, hold or breakdown), stale people through the engine: one row per step. See idmerge.funnel.';
