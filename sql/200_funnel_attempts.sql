-- idmerge.funnel_attempts: the funnel engine. Grain: one row per funnel attempt (entry) that
-- the chosen counting counts, overall or in a breakdown segment.
--
-- One pass per person (ClickHouse windowFunnel's idea): the person's relevant events are
-- aggregated once, ordered by event time then ingest sequence, and a small state machine
-- walks them. Identities are the live ones (idmerge.resolved_events), so a funnel is right
-- the moment an import commits (decisions.md, "Propagation lag"; Mixpanel G2, F21).
--
-- Rules (decisions.md "Funnels"; mixpanel-reference.md section 5):
--   * entry: a step-1 event inside [from_date, to_date] (UTC dates, inclusive); the window
--     starts at the entry and is not reset by repeated step-1 events (F1-F3, F9);
--   * specific order is loose (F4): step k is the earliest unused event of step k at or after
--     step k-1's time minus the grace (F6: |dt| <= grace counts either way; equal times
--     count as in order; among equal times the lower ingest sequence comes first); one event
--     never fills two steps;
--   * any order (F5): the steps may happen in any sequence within the window; entry is the
--     first event of any step;
--   * exclusions (F7): an exclusion event strictly between the two steps it applies to ends
--     the attempt; the steps reached before it still count;
--   * hold property constant (F8): every step must carry the entry's value;
--   * re-entry (F10, F15): a new attempt may start only after the previous one exited (by
--     converting, by its window running out, or by an exclusion); the event that excluded
--     does not start it. Uniques count a person's first attempt overall and their first
--     attempt in each breakdown segment (F9, F15); totals count every attempt;
--   * breakdown value by property attribution (F14): step1 (default), first-defined,
--     last-defined or stepN; a missing value is '(not set)';
--   * in progress: not converted, and the window is still open at the project's newest
--     stored event.
--
-- p_people, when given, limits the funnel to those people (resolved distinct_ids): the
-- stale people of the derived tables, whom idmerge.funnel reads here while it reads everyone
-- else from the derived tables.
--
-- Parameters: exclusions is a jsonb array of {"event": name, "from": k, "to": m} (1-based
-- steps; from 1 to the last step when absent). Durations in seconds.

drop function if exists idmerge.funnel_attempts(text, text[], double precision, date, date, text, text, jsonb, text, text, text, double precision);

create or replace function idmerge.funnel_attempts(
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
    p_grace_seconds double precision default 2,
    p_people text[] default null
)
returns table (
    distinct_id text,
    attempt integer,
    segment text,
    counts_overall boolean,
    counts_in_segment boolean,
    reached integer,
    in_progress boolean,
    step_seconds double precision[]
)
language plpgsql stable
set plan_cache_mode = force_custom_plan
-- The live view's join to the links not yet rewritten is hashed, never rescanned per event
-- (report_stale_people, sql/150, says why).
set enable_nestloop = off
set jit = off
as $$
declare
    people_ids text[];
    n integer := cardinality(p_steps);
    project_id_value integer;
    newest_epoch double precision;
    from_epoch double precision;
    to_epoch double precision;
    names text[];
    step_code integer[];
    excl_code integer[] := '{}';
    excl_from integer[] := '{}';
    excl_to integer[] := '{}';
    person record;
    codes integer[];
    times double precision[];
    seqs bigint[];
    holds text[];
    segments text[];
    m integer;
    used boolean[];
    step_index integer[];
    step_time double precision[];
    start_at integer;
    entry integer;
    exit_at integer;
    deadline double precision;
    k integer;
    j integer;
    e integer;
    candidate integer;
    x integer;
    attempt_no integer;
    seen_segments text[];
    value text;
    filled integer;
    excluded boolean;
    attribution_step integer;
begin
    if n is null or n < 1 then
        raise exception 'a funnel needs at least one step' using errcode = 'invalid_parameter_value';
    end if;
    if p_counting not in ('uniques', 'totals') then
        raise exception 'counting must be uniques or totals, not %', p_counting using errcode = 'invalid_parameter_value';
    end if;
    if p_order not in ('specific', 'any') then
        raise exception 'order must be specific or any, not %', p_order using errcode = 'invalid_parameter_value';
    end if;
    if p_window_seconds <= 0 or p_window_seconds > 366 * 86400 then
        raise exception 'the conversion window must be more than 0 and at most 366 days' using errcode = 'invalid_parameter_value';
    end if;
    attribution_step := case
        when p_breakdown_attribution = 'step1' then 1
        when p_breakdown_attribution ~ '^step[0-9]+$' then substr(p_breakdown_attribution, 5)::integer
        when p_breakdown_attribution in ('first-defined', 'last-defined') then 0
    end;
    if attribution_step is null or attribution_step > n then
        raise exception 'breakdown attribution must be step1..step%, first-defined or last-defined, not %',
            n, p_breakdown_attribution using errcode = 'invalid_parameter_value';
    end if;

    select id into project_id_value from idmerge.projects where name = p_project;
    if project_id_value is null then
        raise exception 'no project named %', p_project using errcode = 'invalid_parameter_value';
    end if;
    newest_epoch := idmerge.report_newest_ms(project_id_value) / 1000.0;
    from_epoch := extract(epoch from p_from_date::timestamp at time zone 'UTC');
    to_epoch := extract(epoch from (p_to_date + 1)::timestamp at time zone 'UTC');

    -- Event names get small integer codes (a name used by two steps gets one code).
    names := '{}';
    step_code := '{}';
    for k in 1 .. n loop
        if not p_steps[k] = any(names) then
            names := names || p_steps[k];
        end if;
        step_code := step_code || array_position(names, p_steps[k]);
    end loop;
    for x in 0 .. coalesce(jsonb_array_length(p_exclusions), 0) - 1 loop
        value := p_exclusions -> x ->> 'event';
        if not value = any(names) then
            names := names || value;
        end if;
        excl_code := excl_code || array_position(names, value);
        excl_from := excl_from || coalesce((p_exclusions -> x ->> 'from')::integer, 1);
        excl_to := excl_to || coalesce((p_exclusions -> x ->> 'to')::integer, n);
    end loop;

    if p_people is not null then
        if cardinality(p_people) = 0 then
            return;
        end if;
        people_ids := idmerge.report_people_ids(project_id_value, p_people);
    end if;

    for person in
        select
            r.distinct_id as person_id,
            array_agg(array_position(names, r.event) order by r.time, r.ingest_seq) as codes,
            array_agg(extract(epoch from r.time)::double precision order by r.time, r.ingest_seq) as times,
            array_agg(r.ingest_seq order by r.time, r.ingest_seq) as seqs,
            array_agg(r.properties ->> p_hold order by r.time, r.ingest_seq) as holds,
            array_agg(r.properties ->> p_breakdown order by r.time, r.ingest_seq) as segments
        from idmerge.resolved_events as r
        where r.project_id = project_id_value
            and (p_people is null or (r.ingested_distinct_id = any(people_ids) and r.distinct_id = any(p_people)))
            and r.event = any(names)
            -- Each later step may come up to the grace before the previous one, so a chain
            -- of them reaches back (n - 1) graces before a step-1 event at --from.
            and (p_from_date is null or r.time >= to_timestamp(from_epoch - greatest(n - 1, 1) * p_grace_seconds))
            and (p_to_date is null or r.time <= to_timestamp(to_epoch + p_window_seconds + p_grace_seconds))
        group by r.distinct_id
    loop
        codes := person.codes;
        times := person.times;
        seqs := person.seqs;
        holds := person.holds;
        segments := person.segments;
        m := cardinality(codes);
        used := array_fill(false, array[m]);
        start_at := 1;
        attempt_no := 0;
        seen_segments := '{}';

        <<attempts>>
        loop
            -- Entry: the first step-1 event (any step, in any order) at or after start_at.
            entry := null;
            for j in start_at .. m loop
                if (codes[j] = step_code[1] or (p_order = 'any' and codes[j] = any(step_code)))
                    and (p_from_date is null or times[j] >= from_epoch)
                    and (p_to_date is null or times[j] < to_epoch) then
                    entry := j;
                    exit;
                end if;
            end loop;
            exit attempts when entry is null;

            attempt_no := attempt_no + 1;
            deadline := times[entry] + p_window_seconds;
            step_index := array_fill(null::integer, array[n]);
            step_time := array_fill(null::double precision, array[n]);
            used[entry] := true;
            filled := 1;
            excluded := false;
            exit_at := null;

            if p_order = 'specific' then
                step_index[1] := entry;
                step_time[1] := times[entry];
                for k in 2 .. n loop
                    -- The earliest unused step-k event at or after step k-1's time minus the grace.
                    candidate := null;
                    for j in start_at .. m loop
                        continue when used[j] or codes[j] <> step_code[k];
                        continue when times[j] < step_time[k - 1] - p_grace_seconds;
                        exit when times[j] > deadline;
                        continue when p_hold is not null and holds[j] is distinct from holds[entry];
                        candidate := j;
                        exit;
                    end loop;
                    -- An exclusion strictly between step k-1 and step k (or the window's end).
                    for e in step_index[k - 1] + 1 .. m loop
                        exit when candidate is not null
                            and (times[e] > times[candidate] or (times[e] = times[candidate] and seqs[e] >= seqs[candidate]));
                        exit when times[e] > deadline;
                        continue when used[e];
                        for x in 1 .. coalesce(cardinality(excl_code), 0) loop
                            if codes[e] = excl_code[x] and k - 1 >= excl_from[x] and k <= excl_to[x] then
                                excluded := true;
                                exit_at := e;
                            end if;
                        end loop;
                        exit when excluded;
                    end loop;
                    exit when excluded or candidate is null;
                    used[candidate] := true;
                    step_index[k] := candidate;
                    step_time[k] := times[candidate];
                    filled := k;
                end loop;
            else
                -- Any order: fill each step with its first matching event in the window.
                for k in 1 .. n loop
                    if step_code[k] = codes[entry] then
                        step_index[k] := entry;
                        step_time[k] := times[entry];
                        exit;
                    end if;
                end loop;
                for j in entry + 1 .. m loop
                    exit when times[j] > deadline or filled = n;
                    continue when used[j];
                    candidate := null;
                    if p_hold is null or holds[j] is not distinct from holds[entry] then
                        for k in 1 .. n loop
                            if step_code[k] = codes[j] and step_index[k] is null then
                                candidate := k;
                                exit;
                            end if;
                        end loop;
                    end if;
                    if candidate is not null then
                        used[j] := true;
                        step_index[candidate] := j;
                        step_time[candidate] := times[j];
                        filled := filled + 1;
                    else
                        for x in 1 .. coalesce(cardinality(excl_code), 0) loop
                            if codes[j] = excl_code[x] and filled >= excl_from[x] and filled < excl_to[x] then
                                excluded := true;
                                exit_at := j;
                            end if;
                        end loop;
                        exit when excluded;
                    end if;
                end loop;
            end if;

            -- The breakdown value, by property attribution.
            value := null;
            if p_breakdown is not null then
                if attribution_step > 0 then
                    if p_order = 'specific' and step_index[attribution_step] is not null then
                        value := segments[step_index[attribution_step]];
                    elsif p_order = 'any' then
                        value := segments[entry];
                    end if;
                elsif p_breakdown_attribution = 'first-defined' then
                    for k in 1 .. n loop
                        if step_index[k] is not null and segments[step_index[k]] is not null then
                            value := segments[step_index[k]];
                            exit;
                        end if;
                    end loop;
                else
                    for k in reverse n .. 1 loop
                        if step_index[k] is not null and segments[step_index[k]] is not null then
                            value := segments[step_index[k]];
                            exit;
                        end if;
                    end loop;
                end if;
                value := coalesce(value, '(not set)');
            end if;

            distinct_id := person.person_id;
            attempt := attempt_no;
            segment := value;
            counts_overall := p_counting = 'totals' or attempt_no = 1;
            counts_in_segment := p_breakdown is not null
                and (p_counting = 'totals' or not value = any(seen_segments));
            reached := filled;
            in_progress := filled < n and not excluded and deadline >= newest_epoch;
            step_seconds := array_fill(null::double precision, array[n]);
            if p_order = 'specific' then
                for k in 2 .. filled loop
                    step_seconds[k] := step_time[k] - step_time[k - 1];
                end loop;
            end if;
            if counts_in_segment then
                seen_segments := seen_segments || value;
            end if;
            if counts_overall or counts_in_segment then
                return next;
            end if;

            -- Re-entry only after this attempt exited.
            exit attempts when p_counting = 'uniques' and p_breakdown is null;
            if excluded then
                start_at := exit_at + 1;
            elsif filled = n then
                start_at := 1;
                for k in 1 .. n loop
                    if step_index[k] is not null and step_index[k] + 1 > start_at then
                        start_at := step_index[k] + 1;
                    end if;
                end loop;
            else
                start_at := null;
                for j in entry .. m loop
                    if times[j] > deadline then
                        start_at := j;
                        exit;
                    end if;
                end loop;
                exit attempts when start_at is null;
            end if;
            exit attempts when start_at > m;
        end loop;
    end loop;
end
$$;

comment on function idmerge.funnel_attempts(text, text[], double precision, date, date, text, text, jsonb, text, text, text, double precision, text[]) is
    'Funnel engine: one row per counted attempt (person, attempt number, breakdown segment, steps reached, in progress, seconds between steps). See idmerge.funnel for the report.';
