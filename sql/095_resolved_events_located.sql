-- idmerge.resolved_events_located: the live view, idmerge.resolved_events, with where each
-- row is stored. Grain: one row per stored event. Internal: the nightly refresh reads the
-- stale people's events through it, and its props part reads the same rows again by ctid in
-- the same snapshot (sql/150_report_tables.sql, "Refreshing"). resolved_events selects from it
-- (sql/100_resolved_events.sql), so the resolution below is written once.
--
-- Identities are live: correct the moment an import commits, whether or not the nightly job
-- has run. idmerge.events.distinct_id already holds the resolution as of resolved_seq (set
-- at ingest, rewritten nightly); only mappings the nightly job has not yet written
-- (identity_map.rewritten = false) that are newer than an event's resolution correct it,
-- so the join touches the few pending mappings, not the whole map.

create or replace view idmerge.resolved_events_located as
with events as (
    select *, tableoid as event_partition, ctid as event_ctid from idmerge.events
),
pending_mappings as (
    select project_id, id, canonical_id, seq
    from idmerge.identity_map
    where not rewritten
),
projects as (
    select id, name from idmerge.projects
),
final as (
    select
        projects.name as project,
        events.event,
        events.time,
        events.insert_id,
        coalesce(pending_mappings.canonical_id, events.distinct_id) as distinct_id,
        events.ingested_distinct_id,
        events.device_id,
        events.user_id,
        case
            when coalesce(pending_mappings.canonical_id, events.distinct_id) <> events.ingested_distinct_id
                then events.ingested_distinct_id
        end as distinct_id_before_identity,
        events.identity_failure_reason,
        events.identity_failure_description,
        events.properties,
        events.seq as ingest_seq,
        events.project_id,
        events.batch_id,
        events.event_partition::regclass as event_partition,
        events.event_ctid
    from events
    -- A left join on the projects' key: PostgreSQL removes it when a query does not read
    -- the project column, so a scan of the view costs little more than a scan of the events.
    left join projects
        on projects.id = events.project_id
    left join pending_mappings
        on pending_mappings.project_id = events.project_id
        and pending_mappings.id = events.ingested_distinct_id
        and pending_mappings.seq > events.resolved_seq
)
select * from final;

comment on view idmerge.resolved_events_located is 'Internal: idmerge.resolved_events with where each row is stored, for the nightly refresh (its props part reads the same rows again by ctid); not for reports.';
comment on column idmerge.resolved_events_located.project is 'As idmerge.resolved_events.project.';
comment on column idmerge.resolved_events_located.event is 'As idmerge.resolved_events.event.';
comment on column idmerge.resolved_events_located.time is 'As idmerge.resolved_events.time.';
comment on column idmerge.resolved_events_located.insert_id is 'As idmerge.resolved_events.insert_id.';
comment on column idmerge.resolved_events_located.distinct_id is 'As idmerge.resolved_events.distinct_id.';
comment on column idmerge.resolved_events_located.ingested_distinct_id is 'As idmerge.resolved_events.ingested_distinct_id.';
comment on column idmerge.resolved_events_located.device_id is 'As idmerge.resolved_events.device_id.';
comment on column idmerge.resolved_events_located.user_id is 'As idmerge.resolved_events.user_id.';
comment on column idmerge.resolved_events_located.distinct_id_before_identity is 'As idmerge.resolved_events.distinct_id_before_identity.';
comment on column idmerge.resolved_events_located.identity_failure_reason is 'As idmerge.resolved_events.identity_failure_reason.';
comment on column idmerge.resolved_events_located.identity_failure_description is 'As idmerge.resolved_events.identity_failure_description.';
comment on column idmerge.resolved_events_located.properties is 'As idmerge.resolved_events.properties.';
comment on column idmerge.resolved_events_located.ingest_seq is 'As idmerge.resolved_events.ingest_seq.';
comment on column idmerge.resolved_events_located.project_id is 'As idmerge.resolved_events.project_id.';
comment on column idmerge.resolved_events_located.batch_id is 'As idmerge.resolved_events.batch_id.';
comment on column idmerge.resolved_events_located.event_partition is 'The partition of idmerge.events that stores the row (its tableoid).';
comment on column idmerge.resolved_events_located.event_ctid is 'The row version''s ctid in that partition: valid only in the snapshot that read it.';
