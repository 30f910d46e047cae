-- idmerge.merge_staged_legacy: moves one staged import batch into idmerge.events for a
-- project in legacy mode (ID Merge disabled, alias only: mixpanel-reference.md section 2.4,
-- decisions.md "Original API", last point).
--
-- Input: the session's temp table idmerge_stage (pos = file order; accepted records have
-- refused_reason null). Grain of the output: one row per batch (stored, duplicates, links).
--
-- Rules, in the order they apply:
--   1. Ingest sequence and duplicates as in merge_staged_simplified (D1/D2: the latest copy
--      wins), except that a copy replacing a stored event keeps the stored event's sequence,
--      its resolution and, for a $create_alias, its outcome: resolution depends on arrival
--      order, so re-importing a file changes nothing.
--   2. $create_alias {alias, distinct_id}, one by one in ingest order (L-R1): the alias maps
--      to the distinct_id, itself resolved through the aliases made before it (chains, L-R3).
--      An alias value can be used once (L-R2): a second use fails with errAliasAlreadyExists
--      and maps nothing. An alias equal to what it would map to is a no-op. Missing or
--      placeholder arguments: errInvalidIdentifier (an IDMerge addition).
--   3. $identify and $merge do nothing (L-R5): they are stored as ordinary events.
--   4. Resolution, at ingest only (L-R1, not retroactive): an event sent as an alias is stored
--      under the alias's target when the alias has a lower ingest sequence than the event.
--      Aliases live in idmerge.identity_aliases, never in the identity map, so the live view
--      and the nightly job never re-map earlier events (resolved_seq stays 0).
-- The project's advisory lock serializes batches, so every rule follows arrival order exactly.

create or replace function idmerge.merge_staged_legacy(p_project_id integer, p_batch_id bigint)
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
    link_count bigint := 0;
    r record;
    target text;
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
    with latest as (
        select * from idmerge.staged_events(seq_base)
    ),
    final as (
        select
            coalesce(e.seq, l.seq) as seq,
            e.seq is not null as replaces,
            e.identity_failure_reason as stored_reason,
            e.identity_failure_description as stored_description,
            l.event, l.time, l.properties, l.insert_id, l.ingested_id, l.device_id, l.user_id, l.warning,
            case when l.event = '$create_alias' then
                idmerge.identifier_text(l.properties -> 'alias') end as alias_arg,
            case when l.event = '$create_alias' then
                idmerge.identifier_text(l.properties -> 'distinct_id') end as alias_of_arg
        from latest as l
        left join idmerge.events as e
            on e.project_id = p_project_id and e.ingested_distinct_id = l.ingested_id
            and e.time = l.time and e.insert_id = l.insert_id and e.event = l.event
    )
    select * from final;

    get diagnostics batch_count = row_count;
    select count(*) into replaced_count from pg_temp.idmerge_batch where replaces;

    perform idmerge.ensure_event_partitions(min(time), max(time)) from pg_temp.idmerge_batch;

    drop table if exists pg_temp.idmerge_identity_outcome;
    create temp table idmerge_identity_outcome (
        seq bigint primary key,
        reason text not null,
        description text
    ) on commit drop;

    -- Rule 2: aliases, in arrival order.
    for r in
        select b.seq, b.alias_arg, b.alias_of_arg
        from pg_temp.idmerge_batch as b
        where b.event = '$create_alias' and not b.replaces
        order by b.seq
    loop
        if r.alias_arg is null or r.alias_of_arg is null then
            insert into pg_temp.idmerge_identity_outcome (seq, reason, description)
            values (r.seq, 'errInvalidIdentifier', '$create_alias needs alias and distinct_id, neither a placeholder');
        elsif exists (
            select 1 from idmerge.identity_aliases as a
            where a.project_id = p_project_id and a.alias = r.alias_arg
        ) then
            insert into pg_temp.idmerge_identity_outcome (seq, reason, description)
            values (r.seq, 'errAliasAlreadyExists', 'alias already exists with the id');
        else
            select coalesce(
                (select a.target_id from idmerge.identity_aliases as a
                 where a.project_id = p_project_id and a.alias = r.alias_of_arg and a.seq < r.seq),
                r.alias_of_arg)
            into target;
            if target <> r.alias_arg then
                insert into idmerge.identity_aliases (project_id, alias, distinct_id, target_id, seq)
                values (p_project_id, r.alias_arg, r.alias_of_arg, target, r.seq);
                link_count := link_count + 1;
            end if;
        end if;
    end loop;

    -- Rule 4: resolve at ingest through the aliases made before each event.
    insert into idmerge.events as e (
            project_id, time, seq, batch_id, event, insert_id, ingested_distinct_id, device_id,
            user_id, distinct_id, resolved_seq, identity_failure_reason, identity_failure_description,
            properties)
        select
            p_project_id, b.time, b.seq, p_batch_id, b.event, b.insert_id, b.ingested_id,
            b.device_id, b.user_id,
            coalesce(a.target_id, b.ingested_id),
            0,
            case
                when b.replaces and b.event = '$create_alias' then b.stored_reason
                else coalesce(o.reason, b.warning)
            end,
            case
                when b.replaces and b.event = '$create_alias' then b.stored_description
                else o.description
            end,
            b.properties
        from pg_temp.idmerge_batch as b
        left join idmerge.identity_aliases as a
            on a.project_id = p_project_id and a.alias = b.ingested_id and a.seq < b.seq
        left join pg_temp.idmerge_identity_outcome as o
            on o.seq = b.seq
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

    -- A copy that replaced a stored event kept its seq, so the derived report tables would
    -- not see its new properties: record its id under this batch's first seq
    -- (migrations/0009_report_replaced_ids.sql), and drop what every refresh has seen.
    if replaced_count > 0 then
        perform idmerge.record_replaced_ids(p_project_id, seq_base + 1);
    end if;

    stored := batch_count;
    duplicates := (staged_count - batch_count) + replaced_count;
    links := link_count;
    return next;
end
$$;

comment on function idmerge.merge_staged_legacy(integer, bigint) is
    'Moves the staged batch (temp table idmerge_stage) into idmerge.events in legacy mode (alias only, not retroactive); returns stored, duplicates and aliases made.';
