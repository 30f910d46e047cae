-- idmerge.resolved_events: the live view. Grain: one row per stored event.
--
-- Identities are live: correct the moment an import commits, whether or not the nightly job
-- has run: the rewritten distinct_id, corrected by the identity mappings the nightly job has
-- not yet written. The resolution is in sql/095_resolved_events_located.sql; this view only
-- leaves out where rows are stored (queries on it get the plans they got when the resolution
-- was written here).

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
