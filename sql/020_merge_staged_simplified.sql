-- idmerge.merge_staged_simplified: moves one staged import batch into idmerge.events for a
-- project on the Simplified ID Merge API (mixpanel-reference.md section 1, decisions.md).
--
-- Input: the session's temp table idmerge_stage (one row per accepted record, pos = file
-- order). Set-based throughout: no statement per event.
--
-- Rules, in the order they apply:
--   1. Ingest sequence: file order, after every event the project already holds
--      (decisions.md: "first" means lowest ingest sequence, never lowest event time).
--   2. Duplicates (Mixpanel D1/D2): same event, ingested distinct_id, time and $insert_id;
--      the latest copy wins, inside the batch and against stored events.
--   3. Links (S-R5, S-R8): the first event carrying a $device_id D and a $user_id U links
--      $device:D -> U, unless D is linked already; a device is never re-linked.
--   4. Resolution (S-R6, retroactive): an event resolves through the identity map.
--   5. Failure (S-R9): an event whose D is linked to another user keeps its own $user_id and
--      gets $identity_failure_reason = errAnonDistinctIdAssignedAlready.
-- The project's advisory lock serializes batches, so rule 3 follows arrival order exactly.

create or replace function idmerge.merge_staged_simplified(p_project_id integer, p_batch_id bigint)
returns table (stored bigint, duplicates bigint, links bigint)
language plpgsql
set plan_cache_mode = force_custom_plan
as $$
declare
    staged_count bigint;
    seq_span bigint;
    seq_base bigint;
    batch_count bigint;
    replaced_count bigint;
    link_count bigint;
begin
    perform pg_advisory_xact_lock(hashtext('idmerge.project'), p_project_id);

    -- Accepted records, and the span of positions the batch's sequence numbers take.
    select count(*) filter (where refused_reason is null), coalesce(max(pos) + 1, 0)
        into staged_count, seq_span
    from pg_temp.idmerge_stage;
    update idmerge.projects set last_seq = last_seq + seq_span
        where id = p_project_id
        returning last_seq - seq_span into seq_base;

    drop table if exists pg_temp.idmerge_batch;
    create temp table idmerge_batch on commit drop as
    select * from idmerge.staged_events(seq_base);

    get diagnostics batch_count = row_count;

    perform idmerge.ensure_event_partitions(min(time), max(time)) from pg_temp.idmerge_batch;

    -- A new link needs the nightly job only when events stored before this batch carry the
    -- device; this batch's own events are resolved as they are inserted.
    insert into idmerge.identity_map (project_id, id, canonical_id, seq, rewritten)
    select distinct on (device_key)
        p_project_id, device_key, user_id, seq,
        not exists (
            select 1 from idmerge.events as e
            where e.project_id = p_project_id and e.ingested_distinct_id = device_key and e.resolved_seq < seq
        )
    from (
        select '$device:' || b.device_id as device_key, b.user_id, b.seq
        from pg_temp.idmerge_batch as b
        where b.user_id is not null and b.device_id is not null
    ) as pairs
    where not exists (
        select 1 from idmerge.identity_map as m
        where m.project_id = p_project_id and m.id = pairs.device_key
    )
    order by device_key, seq;

    get diagnostics link_count = row_count;

    -- Copies replacing a stored event (counted before the upsert; the project lock holds).
    select count(*) into replaced_count
    from pg_temp.idmerge_batch as b
    where exists (
        select 1 from idmerge.events as e
        where e.project_id = p_project_id and e.ingested_distinct_id = b.ingested_id
            and e.time = b.time and e.insert_id = b.insert_id and e.event = b.event
    );

    insert into idmerge.events as e (
            project_id, time, seq, batch_id, event, insert_id, ingested_distinct_id, device_id,
            user_id, distinct_id, resolved_seq, identity_failure_reason, properties)
        select
            p_project_id, b.time, b.seq, p_batch_id, b.event, b.insert_id, b.ingested_id,
            b.device_id, b.user_id,
            coalesce(m.canonical_id, b.ingested_id),
            coalesce(m.seq, 0),
            case
                when b.user_id is not null and d.canonical_id is not null and d.canonical_id <> b.user_id
                    then 'errAnonDistinctIdAssignedAlready'
                else b.warning
            end,
            b.properties
        from pg_temp.idmerge_batch as b
        left join idmerge.identity_map as m
            on m.project_id = p_project_id and m.id = b.ingested_id
        left join idmerge.identity_map as d
            on d.project_id = p_project_id and b.device_id is not null and d.id = '$device:' || b.device_id
        on conflict (project_id, ingested_distinct_id, time, insert_id, event) do update set
            seq = excluded.seq,
            batch_id = excluded.batch_id,
            device_id = excluded.device_id,
            user_id = excluded.user_id,
            distinct_id = excluded.distinct_id,
            resolved_seq = excluded.resolved_seq,
            identity_failure_reason = excluded.identity_failure_reason,
            identity_failure_description = excluded.identity_failure_description,
            properties = excluded.properties;

    stored := batch_count;
    duplicates := (staged_count - batch_count) + replaced_count;
    links := link_count;
    return next;
end
$$;

comment on function idmerge.merge_staged_simplified(integer, bigint) is
    'Moves the staged batch (temp table idmerge_stage) into idmerge.events under Simplified ID Merge; returns stored, duplicates and links made.';
