-- idmerge.apply_profile_updates: applies one staged batch of Engage updates to
-- idmerge.profiles_store (mixpanel-reference.md section 3, decisions.md "Simplified API").
--
-- Input: the session's temp table idmerge_profile_stage (one row per record, pos = arrival
-- order; records Swift refused already carry refused_field and refused_reason). Grain of the
-- output: one row per batch (applied, refused, created, deleted). Set-based: one fold per
-- profile, no statement per update.
--
-- Rules, in the order they apply:
--   1. Shape (P-R2..P-R10): idmerge.profile_update_problem refuses malformed updates, with the
--      field and the reason.
--   2. Key: the profile named by `$distinct_id`, literally, in simplified projects (a profile on
--      `$device:D` stays there when D links, P-R15; [U] a: updates sent to a linked
--      `$device:D` are not redirected either). Original projects resolve the id through the
--      identity map now, so an update to any member applies to the canonical profile
--      (P-R16); legacy projects through the alias table (an alias's profile is its target's).
--      `$delete` with `$ignore_alias: true` deletes exactly the id named (P-R10).
--   3. Order (P-R2, [U] b): updates apply in arrival order (file order, array order within
--      a batch), each profile's through idmerge.profile_fold; updates that the profile
--      cannot take (`$add` to a text...) are refused, with the field and the reason.
--   4. `$last_seen` (P-R13): the update's `$time`, else the moment of import, unless
--      `$ignore_time` is true.
-- The project's advisory lock (the one imports of events take) serializes batches, so the
-- identity map cannot move while a batch resolves through it.

create or replace function idmerge.apply_profile_updates(p_project_id integer, p_batch_id bigint)
returns table (applied bigint, refused bigint, created bigint, deleted bigint)
language plpgsql as $$
declare
    project_mode text;
    import_at timestamptz := now();
    update_count bigint;
    late_refusals bigint;
begin
    perform pg_advisory_xact_lock(hashtext('idmerge.project'), p_project_id);
    select p.id_merge into project_mode from idmerge.projects as p where p.id = p_project_id;

    update pg_temp.idmerge_profile_stage as s
    set (refused_field, refused_reason) = (
        select problem.field, problem.reason from idmerge.profile_update_problem(s.record, import_at) as problem)
    where s.refused_reason is null;

    drop table if exists pg_temp.idmerge_profile_updates;
    create temp table idmerge_profile_updates on commit drop as
    with staged as (
        select s.pos, s.record
        from pg_temp.idmerge_profile_stage as s
        where s.refused_reason is null
    ),
    parsed as (
        select
            staged.pos,
            idmerge.identifier_text(staged.record -> '$distinct_id') as named_id,
            operation.name as op,
            staged.record -> operation.name as value,
            coalesce((staged.record ->> '$ignore_time')::boolean, false) as ignore_time,
            coalesce((staged.record ->> '$ignore_alias')::boolean, false) as ignore_alias,
            case
                when jsonb_typeof(staged.record -> '$time') = 'number' then
                    timestamptz 'epoch' + trunc(
                        case
                            when (staged.record ->> '$time')::numeric <= 1e11
                                then (staged.record ->> '$time')::numeric * 1000
                            else (staged.record ->> '$time')::numeric
                        end) * interval '1 millisecond'
                else import_at
            end as update_time
        from staged
        cross join lateral (
            select key as name
            from jsonb_object_keys(staged.record) as key
            where key in ('$set', '$set_once', '$add', '$append', '$union', '$remove', '$unset', '$delete')
        ) as operation
    ),
    final as (
        select
            parsed.*,
            case
                when parsed.op = '$delete' and parsed.ignore_alias then parsed.named_id
                when project_mode = 'original' then coalesce(m.canonical_id, parsed.named_id)
                when project_mode = 'legacy' then coalesce(a.target_id, parsed.named_id)
                else parsed.named_id
            end as target_id
        from parsed
        left join idmerge.identity_map as m
            on project_mode = 'original' and m.project_id = p_project_id and m.id = parsed.named_id
        left join idmerge.identity_aliases as a
            on project_mode = 'legacy' and a.project_id = p_project_id and a.alias = parsed.named_id
    )
    select * from final;

    get diagnostics update_count = row_count;

    drop table if exists pg_temp.idmerge_profile_results;
    create temp table idmerge_profile_results on commit drop as
    with targets as (
        select distinct u.target_id from pg_temp.idmerge_profile_updates as u
    ),
    stored as (
        select
            targets.target_id,
            -1::bigint as pos,
            jsonb_build_object(
                'init', true,
                'exists', p.distinct_id is not null,
                'properties', coalesce(p.properties, '{}'),
                'last_seen_at', p.last_seen_at) as input
        from targets
        left join idmerge.profiles_store as p
            on p.project_id = p_project_id and p.distinct_id = targets.target_id
    ),
    updates as (
        select
            u.target_id,
            u.pos,
            jsonb_build_object(
                'pos', u.pos, 'op', u.op, 'value', u.value, 'ignore_time', u.ignore_time, 'at', u.update_time) as input
        from pg_temp.idmerge_profile_updates as u
    ),
    inputs as (
        select * from stored
        union all
        select * from updates
    ),
    final as (
        select inputs.target_id, idmerge.profile_fold(inputs.input order by inputs.pos) as state
        from inputs
        group by inputs.target_id
    )
    select * from final;

    -- Updates the profile could not take.
    update pg_temp.idmerge_profile_stage as s
    set refused_field = refusal ->> 'field', refused_reason = refusal ->> 'reason'
    from pg_temp.idmerge_profile_results as r
    cross join lateral jsonb_array_elements(r.state -> 'refused') as refusal
    where s.pos = (refusal ->> 'pos')::bigint;

    get diagnostics late_refusals = row_count;

    delete from idmerge.profiles_store as p
    using pg_temp.idmerge_profile_results as r
    where p.project_id = p_project_id and p.distinct_id = r.target_id
        and not (r.state ->> 'exists')::boolean;

    get diagnostics deleted = row_count;

    update idmerge.profiles_store as p
    set properties = r.state -> 'properties',
        last_seen_at = (r.state ->> 'last_seen_at')::timestamptz,
        created_at = case when (r.state ->> 'created')::boolean then now() else p.created_at end,
        updated_at = now(),
        batch_id = p_batch_id
    from pg_temp.idmerge_profile_results as r
    where p.project_id = p_project_id and p.distinct_id = r.target_id
        and (r.state ->> 'exists')::boolean and (r.state ->> 'changed')::boolean;

    insert into idmerge.profiles_store (project_id, distinct_id, properties, last_seen_at, batch_id)
    select p_project_id, r.target_id, r.state -> 'properties', (r.state ->> 'last_seen_at')::timestamptz, p_batch_id
    from pg_temp.idmerge_profile_results as r
    where (r.state ->> 'exists')::boolean and (r.state ->> 'changed')::boolean
        and not exists (
            select 1 from idmerge.profiles_store as p
            where p.project_id = p_project_id and p.distinct_id = r.target_id
        );

    select count(*) filter (where (r.state ->> 'created')::boolean) into created
    from pg_temp.idmerge_profile_results as r;

    applied := update_count - late_refusals;
    select count(*) into refused from pg_temp.idmerge_profile_stage as s where s.refused_reason is not null;
    return next;
end
$$;

comment on function idmerge.apply_profile_updates(integer, bigint) is
    'Applies the staged batch of Engage updates (temp table idmerge_profile_stage) to idmerge.profiles_store; returns applied, refused, created and deleted.';
