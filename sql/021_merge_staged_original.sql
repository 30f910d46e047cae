-- idmerge.merge_staged_original: moves one staged import batch into idmerge.events for a
-- project on the Original ID Merge API (mixpanel-reference.md section 2, decisions.md
-- "Original API"), with the helpers it needs.
--
-- Input: the session's temp table idmerge_stage (pos = file order; accepted records have
-- refused_reason null). Grain of the output: one row per batch (stored, duplicates, links).
--
-- Rules, in the order they apply:
--   1. Ingest sequence and duplicates as in merge_staged_simplified (D1/D2: the latest copy
--      wins), except that a copy replacing a stored event keeps the stored event's sequence
--      and, for an identity event, its outcome: identity is order dependent, so an event
--      takes effect once, at its first arrival, and re-importing a file changes nothing.
--   2. First seen: every id an event names (its distinct_id, $identified_id, $anon_id,
--      alias, $distinct_ids) records the lowest ingest sequence naming it.
--   3. Identity events (O-R1), one by one in ingest order; every other event is set-based.
--      Only the identity map changes (one row per non-canonical member, flattened).
--      $identify (O-R2, O-R3, O-R14): $identified_id (else distinct_id) and $anon_id (else
--        $anon_distinct_id); checks in order errSameIDs, errAnonDistinctIdNonGUIDForm (UUID v4
--        after stripping '$device:'), errAnonDistinctIdAssignedAlready (the anon id's cluster
--        holds an id used as $identified_id), errManyIDs; keeps the canonical id of the
--        $identified_id's cluster.
--      $create_alias (O-R4): errAliasAlreadyExists when the alias value was an alias before,
--        or is already merged with other ids; errManyIDs; keeps the canonical id of the
--        distinct_id's cluster. Chains are allowed.
--      $merge (O-R5): exactly two ids in $distinct_ids, only through authenticated import;
--        only errManyIDs; keeps the canonical id of the cluster whose earliest id was seen
--        first (a tie: the first id listed).
--      Two ids already in one cluster: nothing to do, no failure. Missing or placeholder
--      arguments: no merge, errInvalidIdentifier (an IDMerge addition).
--   4. Cluster cap (O-R7): a merge making a cluster of more than projects.cluster_cap ids
--      (default 500) fails.
--   5. Resolution (O-R10, retroactive): events resolve through the identity map as it stands
--      after the batch; the live view and the nightly job carry later changes backwards.
--   6. Failures (O-R8, table 2.2): the identity event is stored anyway, with the reason and
--      the description in identity_failure_reason / identity_failure_description.
-- The project's advisory lock serializes batches, so every rule follows arrival order exactly.

-- The text of an identifier property: a string or a number that is not a placeholder
-- (decisions.md "Placeholder values are never identifiers", the list of EventRules.swift),
-- also behind a '$device:' prefix, as EventRules.isPlaceholder.
create or replace function idmerge.identifier_text(value jsonb)
returns text
language plpgsql immutable as $$
declare
    text_value text;
    trimmed text;
begin
    if value is null or jsonb_typeof(value) not in ('string', 'number') then
        return null;
    end if;
    text_value := value #>> '{}';
    trimmed := btrim(text_value, E' \t\n\r\f\v');
    -- Unquote and drop a '$device:' prefix as often as they nest ('$device:undefined').
    loop
        if length(trimmed) >= 2 and left(trimmed, 1) = right(trimmed, 1) and left(trimmed, 1) in ('"', '''') then
            trimmed := btrim(substr(trimmed, 2, length(trimmed) - 2), E' \t\n\r\f\v');
        elsif left(trimmed, 8) = '$device:' then
            trimmed := btrim(substr(trimmed, 9), E' \t\n\r\f\v');
        else
            exit;
        end if;
    end loop;
    if trimmed = '' or lower(trimmed) = any (array[
        '00000000-0000-0000-0000-000000000000', 'anon', 'anonymous', 'nil', 'none', 'null', 'n/a', 'na',
        'undefined', 'unknown', '<nil>', '0', '-1', 'true', 'false', '[]', '{}', 'guest', 'distinctid',
        'distinct_id', 'id', 'not_authenticated', 'email', '[object object]', 'nan']) then
        return null;
    end if;
    return text_value;
end
$$;

comment on function idmerge.identifier_text(jsonb) is
    'The text of an identifier property (string or number), or null when it is absent, of another type, blank or a placeholder.';

-- decisions.md: 8-4-4-4-12 hex digits, version 4, variant 8 9 a b, case-insensitive, after
-- stripping a '$device:' prefix.
create or replace function idmerge.is_uuid_v4(value text)
returns boolean
language sql immutable as $$
    select coalesce(
        regexp_replace(value, '^\$device:', '')
            ~* '^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$',
        false)
$$;

comment on function idmerge.is_uuid_v4(text) is
    'True when value (a $device: prefix stripped) is a UUID v4: 8-4-4-4-12 hex, version 4, variant 8/9/a/b.';

-- The canonical id an id resolves to now: its identity map row, else itself.
create or replace function idmerge.resolve_identity(p_project_id integer, p_id text)
returns text
language sql stable as $$
    select coalesce(
        (select m.canonical_id from idmerge.identity_map as m where m.project_id = p_project_id and m.id = p_id),
        p_id)
$$;

comment on function idmerge.resolve_identity(integer, text) is
    'The canonical distinct_id p_id resolves to now (itself when the identity map has no row for it).';

-- How many ids the cluster of a canonical id holds: itself and every id mapped to it.
create or replace function idmerge.identity_cluster_size(p_project_id integer, p_canonical_id text)
returns bigint
language sql stable as $$
    select 1 + count(*)
    from idmerge.identity_map as m
    where m.project_id = p_project_id and m.canonical_id = p_canonical_id
$$;

comment on function idmerge.identity_cluster_size(integer, text) is
    'Number of ids in the identity cluster whose canonical id is p_canonical_id.';

-- Joins the cluster of p_lose (a canonical id) into the cluster of p_keep (a canonical id):
-- every member of the losing cluster, its canonical id included, maps to p_keep from p_seq on.
-- Rows whose canonical id changes are pending again for the nightly job.
create or replace function idmerge.join_identity_clusters(
    p_project_id integer, p_keep text, p_lose text, p_seq bigint)
returns void
language plpgsql as $$
begin
    update idmerge.identity_map
    set canonical_id = p_keep, seq = p_seq, rewritten = false, updated_at = now()
    where project_id = p_project_id and canonical_id = p_lose;

    insert into idmerge.identity_map (project_id, id, canonical_id, seq)
    values (p_project_id, p_lose, p_keep, p_seq)
    on conflict (project_id, id) do update set
        canonical_id = excluded.canonical_id, seq = excluded.seq, rewritten = false, updated_at = now();
end
$$;

comment on function idmerge.join_identity_clusters(integer, text, text, bigint) is
    'Maps every member of the cluster of canonical id p_lose (itself included) to canonical id p_keep, as of ingest sequence p_seq.';

create or replace function idmerge.merge_staged_original(
    p_project_id integer, p_batch_id bigint, p_allow_merge boolean default true)
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
    cap integer;
    r record;
    reason text;
    description text;
    keep_id text;
    lose_id text;
    other_id text;
    merged_size bigint;
    keep_first bigint;
    other_first bigint;
begin
    perform pg_advisory_xact_lock(hashtext('idmerge.project'), p_project_id);

    -- Accepted records, and the span of positions the batch's sequence numbers take.
    select count(*) filter (where refused_reason is null), coalesce(max(pos) + 1, 0)
        into staged_count, seq_span
    from pg_temp.idmerge_stage;
    update idmerge.projects set last_seq = last_seq + seq_span
        where id = p_project_id
        returning last_seq - seq_span, cluster_cap into seq_base, cap;

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
            case when l.event = '$identify' then coalesce(
                idmerge.identifier_text(l.properties -> '$identified_id'),
                idmerge.identifier_text(l.properties -> 'distinct_id')) end as identified_arg,
            case when l.event = '$identify' then coalesce(
                idmerge.identifier_text(l.properties -> '$anon_id'),
                idmerge.identifier_text(l.properties -> '$anon_distinct_id')) end as anon_arg,
            case when l.event = '$create_alias' then
                idmerge.identifier_text(l.properties -> 'alias') end as alias_arg,
            case when l.event = '$create_alias' then
                idmerge.identifier_text(l.properties -> 'distinct_id') end as alias_of_arg,
            case when l.event = '$merge' and jsonb_typeof(l.properties -> '$distinct_ids') = 'array' then (
                select array_agg(idmerge.identifier_text(ids.value) order by ids.ordinality)
                from jsonb_array_elements(l.properties -> '$distinct_ids') with ordinality as ids
            ) end as merge_ids
        from latest as l
        left join idmerge.events as e
            on e.project_id = p_project_id and e.ingested_distinct_id = l.ingested_id
            and e.time = l.time and e.insert_id = l.insert_id and e.event = l.event
    )
    select * from final;

    get diagnostics batch_count = row_count;
    select count(*) into replaced_count from pg_temp.idmerge_batch where replaces;

    perform idmerge.ensure_event_partitions(min(time), max(time)) from pg_temp.idmerge_batch;

    -- Rule 2: first seen. An id already known keeps its earlier sequence.
    insert into idmerge.identity_first_seen (project_id, id, first_seq)
    with named as (
        select b.ingested_id as id, b.seq
        from pg_temp.idmerge_batch as b
        union all
        select args.id, b.seq
        from pg_temp.idmerge_batch as b
        cross join lateral unnest(
            array[b.identified_arg, b.anon_arg, b.alias_arg, b.alias_of_arg] || coalesce(b.merge_ids, '{}')
        ) as args (id)
        where b.event in ('$identify', '$create_alias', '$merge') and args.id is not null
    ),
    final as (
        select p_project_id as project_id, id, min(seq) as first_seq
        from named
        group by id
    )
    select * from final
    on conflict (project_id, id) do nothing;

    -- Rule 3: identity events, in arrival order.
    drop table if exists pg_temp.idmerge_identity_outcome;
    create temp table idmerge_identity_outcome (
        seq bigint primary key,
        reason text not null,
        description text
    ) on commit drop;

    for r in
        select b.seq, b.event, b.identified_arg, b.anon_arg, b.alias_arg, b.alias_of_arg, b.merge_ids
        from pg_temp.idmerge_batch as b
        where b.event in ('$identify', '$create_alias', '$merge') and not b.replaces
        order by b.seq
    loop
        reason := null;
        description := null;
        keep_id := null;
        lose_id := null;

        if r.event = '$identify' then
            if r.identified_arg is null or r.anon_arg is null then
                reason := 'errInvalidIdentifier';
                description := '$identify needs $identified_id (or distinct_id) and $anon_id (or $anon_distinct_id), neither a placeholder';
            elsif r.anon_arg = r.identified_arg then
                reason := 'errSameIDs';
                description := 'Identified and anon ID are same in the identify request ' || r.anon_arg;
            elsif not idmerge.is_uuid_v4(r.anon_arg) then
                reason := 'errAnonDistinctIdNonGUIDForm';
                description := '$anon_distinct_id didn''t match expected GUID pattern: ' || r.anon_arg;
            else
                keep_id := idmerge.resolve_identity(p_project_id, r.identified_arg);
                other_id := idmerge.resolve_identity(p_project_id, r.anon_arg);
                if keep_id <> other_id then
                    if exists (
                        select 1 from idmerge.identified_ids as i
                        where i.project_id = p_project_id
                            and (i.id = other_id or i.id in (
                                select m.id from idmerge.identity_map as m
                                where m.project_id = p_project_id and m.canonical_id = other_id))
                    ) then
                        reason := 'errAnonDistinctIdAssignedAlready';
                        description := '$anon_distinct_id already identified: ' || r.anon_arg;
                    else
                        lose_id := other_id;
                    end if;
                end if;
            end if;

        elsif r.event = '$create_alias' then
            if r.alias_arg is null or r.alias_of_arg is null then
                reason := 'errInvalidIdentifier';
                description := '$create_alias needs alias and distinct_id, neither a placeholder';
            elsif exists (
                select 1 from idmerge.identity_aliases as a
                where a.project_id = p_project_id and a.alias = r.alias_arg
            ) then
                reason := 'errAliasAlreadyExists';
                description := 'alias already exists with the id';
            else
                keep_id := idmerge.resolve_identity(p_project_id, r.alias_of_arg);
                other_id := idmerge.resolve_identity(p_project_id, r.alias_arg);
                if keep_id <> other_id then
                    if idmerge.identity_cluster_size(p_project_id, other_id) > 1 then
                        -- The alias value is merged with other ids already.
                        reason := 'errAliasAlreadyExists';
                        description := 'alias already exists with the id';
                    else
                        lose_id := other_id;
                    end if;
                end if;
            end if;

        else
            if not p_allow_merge then
                reason := 'errMergeNotAuthenticated';
                description := '$merge is accepted only through authenticated import (the CLI, or /import with the project secret)';
            elsif r.merge_ids is null or cardinality(r.merge_ids) <> 2
                or r.merge_ids[1] is null or r.merge_ids[2] is null then
                reason := 'errInvalidIdentifier';
                description := '$merge needs exactly 2 ids in $distinct_ids, neither a placeholder';
            else
                keep_id := idmerge.resolve_identity(p_project_id, r.merge_ids[1]);
                other_id := idmerge.resolve_identity(p_project_id, r.merge_ids[2]);
                if keep_id <> other_id then
                    -- The older cluster: the one whose earliest id was seen first.
                    select min(f.first_seq) into keep_first
                    from idmerge.identity_first_seen as f
                    where f.project_id = p_project_id and (f.id = keep_id or f.id in (
                        select m.id from idmerge.identity_map as m
                        where m.project_id = p_project_id and m.canonical_id = keep_id));
                    select min(f.first_seq) into other_first
                    from idmerge.identity_first_seen as f
                    where f.project_id = p_project_id and (f.id = other_id or f.id in (
                        select m.id from idmerge.identity_map as m
                        where m.project_id = p_project_id and m.canonical_id = other_id));
                    if other_first < keep_first then
                        lose_id := keep_id;
                        keep_id := other_id;
                    else
                        lose_id := other_id;
                    end if;
                end if;
            end if;
        end if;

        -- Rule 4: the cluster cap, for every merge that passed its own checks.
        if reason is null and lose_id is not null then
            merged_size := idmerge.identity_cluster_size(p_project_id, keep_id)
                + idmerge.identity_cluster_size(p_project_id, lose_id);
            if merged_size > cap then
                reason := 'errManyIDs';
                description := 'too many distinctIDs mapped together, Cluster size: ' || merged_size
                    || ' Max limit: ' || cap;
            else
                perform idmerge.join_identity_clusters(p_project_id, keep_id, lose_id, r.seq);
                link_count := link_count + 1;
            end if;
        end if;

        -- A successful $identify identifies its $identified_id; a successful $create_alias
        -- uses up its alias value (also when the two ids were in one cluster already).
        if reason is null and r.event = '$identify' then
            insert into idmerge.identified_ids (project_id, id, seq)
            values (p_project_id, r.identified_arg, r.seq)
            on conflict (project_id, id) do nothing;
        elsif reason is null and r.event = '$create_alias' and r.alias_arg <> r.alias_of_arg then
            insert into idmerge.identity_aliases (project_id, alias, distinct_id, target_id, seq)
            values (p_project_id, r.alias_arg, r.alias_of_arg, keep_id, r.seq);
        end if;

        if reason is not null then
            insert into pg_temp.idmerge_identity_outcome (seq, reason, description)
            values (r.seq, reason, description);
        end if;
    end loop;

    -- Rule 5 and 6: store the events, resolved through the map as it now stands.
    insert into idmerge.events as e (
            project_id, time, seq, batch_id, event, insert_id, ingested_distinct_id, device_id,
            user_id, distinct_id, resolved_seq, identity_failure_reason, identity_failure_description,
            properties)
        select
            p_project_id, b.time, b.seq, p_batch_id, b.event, b.insert_id, b.ingested_id,
            b.device_id, b.user_id,
            coalesce(m.canonical_id, b.ingested_id),
            coalesce(m.seq, 0),
            case
                when b.replaces and b.event in ('$identify', '$create_alias', '$merge') then b.stored_reason
                else coalesce(o.reason, b.warning)
            end,
            case
                when b.replaces and b.event in ('$identify', '$create_alias', '$merge') then b.stored_description
                else o.description
            end,
            b.properties
        from pg_temp.idmerge_batch as b
        left join idmerge.identity_map as m
            on m.project_id = p_project_id and m.id = b.ingested_id
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

    -- A mapping this batch made needs the nightly job only when a stored event resolved
    -- before it carries the id: this batch's events were resolved through it as they were
    -- inserted. Marking the others rewritten keeps the live view's pending set small (as
    -- merge_staged_simplified does for new links); the project lock holds, and a nightly run
    -- only ever lowers resolved_seq below the new mapping's seq, so nothing stale is missed.
    update idmerge.identity_map as m
    set rewritten = true
    where m.project_id = p_project_id and not m.rewritten and m.seq > seq_base
        and not exists (
            select 1 from idmerge.events as e
            where e.project_id = p_project_id and e.ingested_distinct_id = m.id and e.resolved_seq < m.seq
        );

    stored := batch_count;
    duplicates := (staged_count - batch_count) + replaced_count;
    links := link_count;
    return next;
end
$$;

comment on function idmerge.merge_staged_original(integer, bigint, boolean) is
    'Moves the staged batch (temp table idmerge_stage) into idmerge.events under Original ID Merge ($identify, $create_alias, $merge); returns stored, duplicates and merges made. p_allow_merge: false refuses $merge (unauthenticated sources).';
