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
--
-- Same rows as idmerge.staged_events (sql/015), without materialising the batch again
-- (BENCHMARKS.md, "Where import time goes"):
--   * duplicates inside the batch are found by sorting a 64-bit hash of the key (measured:
--     sorting a million bigints beats a hash table of a million groups, so hash aggregation
--     is off in this function; a sort also spills gracefully under a small work_mem); only rows
--     whose hash repeats are compared on the key itself, and the earlier copies are marked
--     `superseded` in the stage (by ctid; usually none), so later passes filter them for free
--     instead of anti-joining every row against a list of them;
--   * the winning rows are inserted with a plain INSERT, which costs about half an
--     INSERT ... ON CONFLICT on the unique index; if a row collides with a stored event the
--     statement fails with unique_violation, is rolled back, and the batch takes the upsert
--     instead (the cost of a re-import is then the upsert plus the aborted attempt).

create or replace function idmerge.merge_staged_simplified(p_project_id integer, p_batch_id bigint)
returns table (stored bigint, duplicates bigint, links bigint)
language plpgsql
set plan_cache_mode = force_custom_plan
set jit = off
set enable_hashagg = off
as $$
#variable_conflict use_column
declare
    staged_count bigint;
    seq_span bigint;
    seq_base bigint;
    missing_ids bigint;
    min_ms bigint;
    max_ms bigint;
    repeated_hashes bigint[];
    batch_count bigint;
    superseded_count bigint := 0;
    map_rows real;
    saved_hashjoin text;
    saved_mergejoin text;
    replaced_count bigint := 0;
    link_count bigint;
    -- The batch's events resolved through the map, as one statement text for both the plain
    -- INSERT and the upsert ($1 project, $2 batch, $3 seq_base).
    insert_batch constant text := $insert$
    insert into idmerge.events (
            project_id, time, seq, batch_id, event, insert_id, ingested_distinct_id, device_id,
            user_id, distinct_id, resolved_seq, identity_failure_reason, properties)
        select
            $1, b.time, b.seq, $2, b.event, b.insert_id, b.ingested_id,
            b.device_id, b.user_id,
            coalesce(m.canonical_id, b.ingested_id),
            coalesce(m.seq, 0),
            case
                when b.user_id is not null and d.canonical_id is not null and d.canonical_id <> b.user_id
                    then 'errAnonDistinctIdAssignedAlready'
                else b.warning
            end,
            b.properties
        from (
            select
                $3 + s.pos + 1 as seq, timestamptz 'epoch' + s.time_ms * interval '1 millisecond' as time,
                s.event, s.insert_id, s.ingested_id, s.device_id, s.user_id, s.warning, s.properties
            from pg_temp.idmerge_stage as s
            where s.refused_reason is null
                and not s.superseded
        ) as b
        left join idmerge.identity_map as m
            on m.project_id = $1 and m.id = b.ingested_id
        -- The device's link matters only for an event that also carries a user id (rule 5):
        -- the others probe with a null key, which costs nothing.
        left join idmerge.identity_map as d
            on d.project_id = $1
            and d.id = case when b.user_id is not null then '$device:' || b.device_id end
    $insert$;
    upsert_clause constant text := $upsert$
        on conflict (project_id, ingested_distinct_id, time, insert_id, event) do update set
            seq = excluded.seq,
            batch_id = excluded.batch_id,
            device_id = excluded.device_id,
            user_id = excluded.user_id,
            distinct_id = excluded.distinct_id,
            resolved_seq = excluded.resolved_seq,
            identity_failure_reason = excluded.identity_failure_reason,
            identity_failure_description = excluded.identity_failure_description,
            properties = excluded.properties
    $upsert$;
begin
    perform pg_advisory_xact_lock(hashtext('idmerge.project'), p_project_id);

    -- Accepted records, the span of positions the batch's sequence numbers take, the records
    -- without $insert_id and the time range, in one pass.
    select count(*) filter (where s.refused_reason is null), coalesce(max(s.pos) + 1, 0),
        count(*) filter (where s.refused_reason is null and s.insert_id is null),
        min(s.time_ms) filter (where s.refused_reason is null),
        max(s.time_ms) filter (where s.refused_reason is null)
        into staged_count, seq_span, missing_ids, min_ms, max_ms
    from pg_temp.idmerge_stage as s;
    update idmerge.projects set last_seq = last_seq + seq_span
        where id = p_project_id
        returning last_seq - seq_span into seq_base;

    -- $insert_id as sent, or derived (idmerge.derived_insert_id), written back once so every
    -- later statement reads the key as stored.
    if missing_ids > 0 then
        update pg_temp.idmerge_stage as s
            set insert_id = idmerge.derived_insert_id(s.event, s.time_ms, s.properties)
            where s.refused_reason is null and s.insert_id is null;
    end if;

    -- Rule 2 inside the batch: every copy but the latest is marked superseded.
    select array_agg(repeated.h) into repeated_hashes
    from (
        select hashed.h
        from (
            select hashtextextended(s.event, hashtextextended(s.insert_id, hashtextextended(s.ingested_id, s.time_ms))) as h
            from pg_temp.idmerge_stage as s
            where s.refused_reason is null
        ) as hashed
        group by hashed.h
        having count(*) > 1
    ) as repeated;
    if repeated_hashes is not null then
        update pg_temp.idmerge_stage as s
        set superseded = true
        where s.ctid = any (array(
            select ranked.ctid
            from (
                select c.ctid,
                    row_number() over (
                        partition by c.ingested_id, c.time_ms, c.insert_id, c.event order by c.pos desc) as copy_rank
                from pg_temp.idmerge_stage as c
                where c.refused_reason is null
                    and hashtextextended(c.event, hashtextextended(c.insert_id, hashtextextended(c.ingested_id, c.time_ms)))
                        = any (repeated_hashes)
            ) as ranked
            where ranked.copy_rank > 1));
        get diagnostics superseded_count = row_count;
    end if;
    batch_count := staged_count - superseded_count;

    -- The stage has no statistics: without them the planner takes `refused_reason is null`
    -- for 0.5% of the rows and may pick nested loops over the whole batch. These columns'
    -- statistics cost about 0.1 s for a million rows, a millisecond for an HTTP batch.
    analyze pg_temp.idmerge_stage (refused_reason, superseded);

    if min_ms is not null then
        perform idmerge.ensure_event_partitions(
            timestamptz 'epoch' + min_ms * interval '1 millisecond',
            timestamptz 'epoch' + max_ms * interval '1 millisecond');
    end if;

    -- A small batch against a large identity map: probing the map's primary key for each
    -- event beats hashing the project's whole map, twice, for every batch (measured: a
    -- 2,000-event batch against the 116k links of a million events spent 100 of its 130 ms
    -- building those hash tables). The planner costs every probe as a random read and
    -- hashes, so hash and merge joins are off for the statements below when the batch is
    -- under an eighth of the map (reltuples: as of the map's last analyze), and restored
    -- after them.
    select c.reltuples into map_rows from pg_class as c where c.oid = 'idmerge.identity_map'::regclass;
    if staged_count * 8 < map_rows then
        saved_hashjoin := current_setting('enable_hashjoin');
        saved_mergejoin := current_setting('enable_mergejoin');
        perform set_config('enable_hashjoin', 'off', true), set_config('enable_mergejoin', 'off', true);
    end if;

    -- A new link needs the nightly job only when events stored before this batch carry the
    -- device; this batch's own events are resolved as they are inserted.
    insert into idmerge.identity_map (project_id, id, canonical_id, seq, rewritten)
    select
        p_project_id, first_pairs.device_key, first_pairs.user_id, first_pairs.seq,
        not exists (
            select 1 from idmerge.events as e
            where e.project_id = p_project_id and e.ingested_distinct_id = first_pairs.device_key
                and e.resolved_seq < first_pairs.seq
        )
    from (
        select distinct on (device_key) device_key, user_id, seq
        from (
            select '$device:' || s.device_id as device_key, s.user_id, seq_base + s.pos + 1 as seq
            from pg_temp.idmerge_stage as s
            where s.refused_reason is null and s.user_id is not null and s.device_id is not null
                and not s.superseded
        ) as pairs
        where not exists (
            select 1 from idmerge.identity_map as m
            where m.project_id = p_project_id and m.id = pairs.device_key
        )
        order by device_key, seq
    ) as first_pairs;

    get diagnostics link_count = row_count;

    -- Rule 2 against stored events: the plain INSERT, and only when a copy replaces a stored
    -- event (unique_violation rolls it back), the count of those copies and the upsert.
    begin
        execute insert_batch using p_project_id, p_batch_id, seq_base;
    exception when unique_violation then
        -- Some copies replace stored events (rule 2 against stored events): count them, then
        -- upsert the whole batch.
        select count(*) into replaced_count
        from pg_temp.idmerge_stage as s
        where s.refused_reason is null
            and not s.superseded
            and exists (
                select 1 from idmerge.events as e
                where e.project_id = p_project_id and e.ingested_distinct_id = s.ingested_id
                    and e.time = timestamptz 'epoch' + s.time_ms * interval '1 millisecond'
                    and e.insert_id = s.insert_id and e.event = s.event
            );

        execute insert_batch || upsert_clause using p_project_id, p_batch_id, seq_base;
    end;

    if saved_hashjoin is not null then
        perform set_config('enable_hashjoin', saved_hashjoin, true),
            set_config('enable_mergejoin', saved_mergejoin, true);
    end if;

    stored := batch_count;
    duplicates := (staged_count - batch_count) + replaced_count;
    links := link_count;
    return next;
end
$$;

comment on function idmerge.merge_staged_simplified(integer, bigint) is
    'Moves the staged batch (temp table idmerge_stage) into idmerge.events under Simplified ID Merge; returns stored, duplicates and links made.';
