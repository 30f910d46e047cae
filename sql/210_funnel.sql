-- idmerge.funnel: a funnel report. Grain: one row per step, overall (segment null) and per
-- breakdown segment when a breakdown property is given.
--
-- Same parameters and rules as idmerge.funnel_attempts (the engine). count is the number of
-- counted attempts that reached the step (uniques: people; totals: attempts);
-- conversion_rate = count / the first step's count; in_progress counts attempts not yet
-- converted whose window is open at the project's newest event (repeated on every row of a
-- segment); times to convert are seconds from the previous step, over attempts that
-- reached the step (null for step 1).
--
-- Routing: counting uniques in specific order with no exclusion, hold or breakdown and
-- steps of distinct names (the common funnel) reads the derived tables the nightly job keeps
-- (idmerge.funnel_derived, sql/205) for the people they hold current, and the engine for the
-- others; every other shape, and a project without derived tables yet, runs the engine over
-- the live view. Both give the same answer (Tests/IDMergeCoreTests/ReportDerivedTests.swift).
--
-- Example, from psql:
--   select * from idmerge.funnel('default', array['Landing', 'Sign Up', 'Purchase'],
--                                p_window_seconds => 7 * 86400, p_breakdown => 'utm_source');

create or replace function idmerge.funnel(
    p_project text,
    p_steps text[],
    p_window_seconds double precision default 604800,
    p_from_date date default null,
    p_to_date date default null,
    p_counting text default 'uniques',
    p_order text default 'specific',
    p_exclusions jsonb default '[]',
    p_hold text default null,
    p_breakdown text default null,
    p_breakdown_attribution text default 'step1',
    p_grace_seconds double precision default 2
)
returns table (
    segment text,
    step integer,
    event text,
    count bigint,
    conversion_rate double precision,
    in_progress bigint,
    median_seconds_to_convert double precision,
    average_seconds_to_convert double precision
)
language plpgsql stable
set plan_cache_mode = force_custom_plan
set jit = off
as $$
#variable_conflict use_column
declare
    project_id_value integer;
    stale text[];
begin
    select id into project_id_value from idmerge.projects where name = p_project;
    -- The common shape reads the derived tables (sql/205_funnel_derived.sql) for the people
    -- they hold current and the engine for the stale ones; any other shape, or a project
    -- without derived tables, runs the engine over everyone.
    if project_id_value is not null
        and p_counting = 'uniques' and p_order = 'specific'
        and coalesce(jsonb_array_length(p_exclusions), 0) = 0
        and p_hold is null and p_breakdown is null
        and cardinality(p_steps) >= 1
        and cardinality(p_steps) = (select count(distinct s) from unnest(p_steps) as s)
        and p_window_seconds > 0 and p_window_seconds <= 366 * 86400
        and p_breakdown_attribution is not null
        and (p_breakdown_attribution in ('step1', 'first-defined', 'last-defined')
             or (p_breakdown_attribution ~ '^step[0-9]+$'
                 and substr(p_breakdown_attribution, 5)::integer <= cardinality(p_steps)))
    then
        -- Nothing stored since the derived tables were built (every event, identity mapping and
        -- replaced id takes its seq from projects.last_seq, in the transaction that stores it):
        -- no one is stale, without reading the events and mappings newer than as_of_seq.
        if not pg_is_in_recovery() and exists (
            select from idmerge.report_state as s
            inner join idmerge.projects as p on p.id = s.project_id
            where s.project_id = project_id_value and p.last_seq <= s.as_of_seq)
        then
            stale := '{}';
        else
            stale := idmerge.report_stale_people(project_id_value);
        end if;
    end if;

    if stale is null then
        return query
    with attempts as (
        select *
        from idmerge.funnel_attempts(
            p_project, p_steps, p_window_seconds, p_from_date, p_to_date, p_counting, p_order,
            p_exclusions, p_hold, p_breakdown, p_breakdown_attribution, p_grace_seconds)
    ),
    steps as (
        select k as step, p_steps[k] as event
        from generate_subscripts(p_steps, 1) as k
    ),
    counted as (
        select null::text as segment, reached, in_progress, step_seconds from attempts where counts_overall
        union all
        select segment, reached, in_progress, step_seconds from attempts where counts_in_segment
    ),
    segments as (
        select null::text as segment
        union
        select distinct segment from counted where segment is not null
    ),
    per_step as (
        select
            segments.segment,
            steps.step,
            steps.event,
            count(counted.reached) filter (where counted.reached >= steps.step) as count,
            count(counted.reached) filter (where counted.in_progress) as in_progress,
            percentile_cont(0.5) within group (order by counted.step_seconds[steps.step])
                filter (where counted.reached >= steps.step and steps.step > 1) as median_seconds_to_convert,
            avg(counted.step_seconds[steps.step])
                filter (where counted.reached >= steps.step and steps.step > 1) as average_seconds_to_convert
        from segments
        cross join steps
        left join counted
            on counted.segment is not distinct from segments.segment
        group by segments.segment, steps.step, steps.event
    ),
    final as (
        select
            segment,
            step,
            event,
            count,
            coalesce(count::double precision / nullif(first_value(count) over (partition by segment order by step), 0), 0)
                as conversion_rate,
            in_progress,
            median_seconds_to_convert,
            average_seconds_to_convert
        from per_step
    )
    select * from final
    order by segment nulls first, step;
        return;
    end if;

    return query
    select
        null::text,
        d.step,
        d.event,
        d.count,
        coalesce(d.count::double precision / nullif(first_value(d.count) over (order by d.step), 0), 0),
        d.in_progress,
        d.median_seconds_to_convert,
        d.average_seconds_to_convert
    from idmerge.funnel_derived(
        project_id_value, p_steps, p_window_seconds, p_from_date, p_to_date, p_grace_seconds, stale) as d
    order by d.step;
end
$$;

comment on function idmerge.funnel(text, text[], double precision, date, date, text, text, jsonb, text, text, text, double precision) is
    'Funnel report: one row per step, overall (segment null) and per breakdown segment. Identities are live. Durations in seconds; dates are UTC and bound the step-1 event.';
