-- idmerge.derived_insert_id: the $insert_id given to an event that arrives without one.
-- A hash of the event's canonical form, so importing the same file again is idempotent
-- (decisions.md; better than Mixpanel D4): the event name, the time in milliseconds (so
-- 1767225600 and 1767225600.0 agree) and the other properties as jsonb text (keys sorted,
-- whitespace and key order normalised).

create or replace function idmerge.derived_insert_id(event text, time_ms bigint, properties jsonb)
returns text
language sql immutable parallel safe as $$
    select 'idm-' || md5(event || ' ' || time_ms::text || ' ' || (properties - 'time')::text)
$$;

comment on function idmerge.derived_insert_id(text, bigint, jsonb) is
    '$insert_id for an event sent without one: md5 of its name, time (ms) and other properties (jsonb text).';

-- idmerge.staged_events: the accepted records of the batch staged in this session's temp
-- table idmerge_stage, one row per distinct event. Grain: one row per duplicate key.
--
-- Every merge function (one per ID Merge mode) starts from it:
--   * ingest sequence: seq_base + file position + 1 (file order; decisions.md);
--   * time: milliseconds to timestamptz (UTC);
--   * $insert_id: as sent, or idmerge.derived_insert_id when missing;
--   * duplicates (Mixpanel D1/D2): same event, ingested distinct_id, time and $insert_id;
--     the latest copy of the batch (highest sequence) wins.

create or replace function idmerge.staged_events(seq_base bigint)
returns table (
    seq bigint, event text, "time" timestamptz, properties jsonb, insert_id text, ingested_id text,
    device_id text, user_id text, warning text)
language plpgsql stable as $$
#variable_conflict use_column
begin
    -- plpgsql, not sql: the temp table exists only in the importing session, so the body
    -- cannot be checked when migrate creates the function.
    return query
    with staged as (
        select
            seq_base + s.pos + 1 as seq,
            s.event,
            s.time_ms,
            timestamptz 'epoch' + s.time_ms * interval '1 millisecond' as time,
            s.properties,
            s.insert_id,
            s.ingested_id,
            s.device_id,
            s.user_id,
            s.warning
        from pg_temp.idmerge_stage as s
        where s.refused_reason is null
    ),
    keyed as (
        select
            seq, event, time, properties,
            coalesce(insert_id, idmerge.derived_insert_id(event, time_ms, properties)) as insert_id,
            ingested_id, device_id, user_id, warning
        from staged
    ),
    final as (
        select distinct on (ingested_id, time, insert_id, event) *
        from keyed
        order by ingested_id, time, insert_id, event, seq desc
    )
    select * from final;
end
$$;

comment on function idmerge.staged_events(bigint) is
    'The staged batch (temp table idmerge_stage), one row per distinct event, latest copy winning; sequence numbers from seq_base.';

-- idmerge.record_replaced_ids: after an original or legacy merge, the ids of the batch's
-- copies that replaced stored events in place (they keep the stored seq, so the derived
-- report tables would not see their new properties), recorded under the batch's first seq
-- p_seq (migrations/0009_report_replaced_ids.sql); and the rows every refresh has seen
-- dropped. Reads the merge's temp table idmerge_batch (its ingested_id and replaces columns).
create or replace function idmerge.record_replaced_ids(p_project_id integer, p_seq bigint)
returns void
language plpgsql as $$
begin
    insert into idmerge.report_replaced_ids (project_id, ingested_distinct_id, seq)
    select distinct p_project_id, b.ingested_id, p_seq
    from pg_temp.idmerge_batch as b
    where b.replaces
    on conflict do nothing;
    delete from idmerge.report_replaced_ids as replaced
    where replaced.project_id = p_project_id
        and replaced.seq <= (select s.as_of_seq from idmerge.report_state as s where s.project_id = p_project_id);
end
$$;
