-- idmerge.resolved_events: the live view. Grain: one row per stored event.
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

-- The documented view: the one above without where rows are stored (the planner inlines
-- both, so a query on it plans as one on idmerge.events).
create or replace view idmerge.resolved_events as
select project, event, time, insert_id, distinct_id, ingested_distinct_id, device_id, user_id,
       distinct_id_before_identity, identity_failure_reason, identity_failure_description, properties,
       ingest_seq, project_id, batch_id
from idmerge.resolved_events_located;

comment on view idmerge.resolved_events is 'One row per stored event with its identity resolved live (no lag after an import commits).';
comment on column idmerge.resolved_events.project is 'Project name.';
comment on column idmerge.resolved_events.event is 'Event name.';
comment on column idmerge.resolved_events.time is 'Event time (timestamptz, UTC, millisecond precision).';
comment on column idmerge.resolved_events.insert_id is '$insert_id (as sent, or derived from a hash of the event when missing).';
comment on column idmerge.resolved_events.distinct_id is 'Resolved canonical distinct_id: the person this event belongs to now.';
comment on column idmerge.resolved_events.ingested_distinct_id is 'distinct_id as derived at ingest ($user_id, else $device: + $device_id, else distinct_id).';
comment on column idmerge.resolved_events.device_id is '$device_id of the event (no $device: prefix), when valid.';
comment on column idmerge.resolved_events.user_id is '$user_id of the event, when valid.';
comment on column idmerge.resolved_events.distinct_id_before_identity is '$distinct_id_before_identity: the ingested distinct_id when the resolved one differs; null otherwise.';
comment on column idmerge.resolved_events.identity_failure_reason is '$identity_failure_reason (simplified) or $failure_reason (original); null when none.';
comment on column idmerge.resolved_events.identity_failure_description is '$failure_description (original API); null when none.';
comment on column idmerge.resolved_events.properties is 'The event''s properties (jsonb), whole, as sent.';
comment on column idmerge.resolved_events.ingest_seq is 'Ingest sequence number: arrival order within the project.';
comment on column idmerge.resolved_events.project_id is 'Project id (idmerge.projects.id).';
comment on column idmerge.resolved_events.batch_id is 'Import batch that stored this copy of the event.';
