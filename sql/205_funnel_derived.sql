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
-- times of each event name as one sorted run, offset by the name's position times 2^42), so
-- step k's count reads the rows of step k's event alone, one per person, with no join:
-- "the earliest time of name c at or after b" is one binary search, width_bucket(c * 2^42 +
-- b - 1, person_keys) counting the keys below it (times are whole milliseconds). A key of a
-- later name, or none, yields a time of 2^42 or more, or null: past any window.

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
as $$
declare
    steps_count integer := cardinality(p_steps);
    newest_ms bigint;
    from_ms bigint := idmerge.report_ms(p_from_date::timestamp at time zone 'UTC');
    to_ms bigint := idmerge.report_ms((p_to_date + 1)::timestamp at time zone 'UTC');
    window_ms double precision := p_window_seconds * 1000;
    grace_ms double precision := p_grace_seconds * 1000;
    block constant bigint := 4398046511104;  -- 2^42
    sql text;
    entries text;
    open_entries text;
    chain text;
    reached text;
    steps_sql text := '';
    j integer;
    k integer;
begin
    newest_ms := idmerge.report_newest_ms(p_project_id);

    -- Entries: people with a step-1 event in the date range; open: their window is still
    -- open at the newest event ($8). Read from the step-1 rows' own times.
    if from_ms is null and to_ms is null then
        entries := 'select count(*) from idmerge.report_person_events as r
            where r.project_id = $1 and r.event = $2[1] and r.distinct_id <> all($3)';
        open_entries := entries || ' and r.first_ms >= ceil($8 - $6)::bigint';
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

    -- Step j >= 2: the rows of step j's event; m1 the entry time, mk the step-k time.
    for j in 2 .. steps_count loop
        chain := format(
            'select r.person_keys as keys, r.person_keys[width_bucket(c.c1 * %1$s + coalesce($4::bigint, 0) - 1, r.person_keys) + 1] - c.c1 * %1$s as m1,
                    c.*
             from idmerge.report_person_events as r
             cross join lateral (select %2$s) as c
             where r.project_id = $1 and r.event = $2[%3$s] and r.distinct_id <> all($3)
             offset 0',
            block,
            (select string_agg(format('array_position(r.person_events, $2[%1$s])::bigint - 1 as c%1$s', i), ', ')
             from generate_series(1, j) as i),
            j);
        for k in 2 .. j loop
            chain := format(
                'select q.*, q.keys[width_bucket(q.c%1$s * %2$s + ceil(q.m%3$s - $7)::bigint - 1, q.keys) + 1] - q.c%1$s * %2$s as m%1$s
                 from (%4$s) as q
                 offset 0',
                k, block, k - 1, chain);
        end loop;
        reached := format('q.m1 < coalesce($5::bigint, %s)', block)
            || (select string_agg(format(' and q.m%s <= q.m1 + $6', i), '') from generate_series(2, j) as i);
        -- Step j's count, times to convert and converted open entries, the stale people's
        -- attempts (the engine) included: one aggregate per step, no sort across steps.
        steps_sql := steps_sql || case when j = 2 then '' else '
            union all' end || format('
            select %1$s as step, count(*) as count,
                   percentile_cont(0.5) within group (order by x.seconds) as median,
                   avg(x.seconds) as average, count(*) filter (where x.open) as open
            from (
                select ((q.m%1$s - q.m%2$s) / 1000.0)::double precision as seconds, q.m1 + $6 >= $8 as open
                from (%3$s) as q
                where %4$s
                union all
                select e.step_seconds[%1$s], false from engine as e where e.reached >= %1$s
            ) as x',
            j, j - 1, chain, reached);
    end loop;

    sql := format('
        with engine as (
            select a.reached, a.in_progress, a.step_seconds
            from idmerge.funnel_attempts(
                $9, $2, $10, $11, $12, ''uniques'', ''specific'', ''[]'', null, null, ''step1'', $13, $3) as a
            where a.counts_overall
        ),
        per_step as (%1$s
        ),
        entered as (
            select (%2$s) + (select count(*) from engine) as count,
                   (%3$s) - coalesce((select per_step.open from per_step where per_step.step = %4$s), 0)
                   + (select count(*) from engine where engine.in_progress) as in_progress
        )
        select k, $2[k], case when k = 1 then entered.count else coalesce(per_step.count, 0) end,
               entered.in_progress, per_step.median, per_step.average
        from generate_subscripts($2, 1) as k
        cross join entered
        left join per_step on per_step.step = k
        order by k',
        case when steps_count = 1
            then 'select 1 as step, 0::bigint as count, null::double precision as median,
                         null::double precision as average, 0::bigint as open where false'
            else steps_sql
        end,
        entries, case when steps_count = 1 then '0' else open_entries end, steps_count);

    return query execute sql
        using p_project_id, p_steps, coalesce(p_skip, '{}'), from_ms, to_ms, window_ms, grace_ms, newest_ms,
              (select name from idmerge.projects where id = p_project_id), p_window_seconds, p_from_date, p_to_date,
              p_grace_seconds;
end
$$;

comment on function idmerge.funnel_derived(integer, text[], double precision, date, date, double precision, text[]) is
    'Set-based funnel over idmerge.report_person_events (uniques, specific order, distinct step names, no exclusion, hold or breakdown), stale people through the engine: one row per step. See idmerge.funnel.';
