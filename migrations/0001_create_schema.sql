-- 0001: the idmerge schema, projects and the events table.
--
-- Forward-only: once applied, this file never changes (migrate refuses an edited one).

create schema if not exists idmerge;

-- One row per project. A project picks its ID Merge API when it is created.
create table idmerge.projects (
    id              serial primary key,
    name            text not null unique check (name <> ''),
    id_merge        text not null default 'simplified'
                    check (id_merge in ('simplified', 'original', 'legacy')),
    token           text not null unique,
    api_secret_hash text not null,
    cluster_cap     integer not null default 500 check (cluster_cap >= 2),
    last_seq        bigint not null default 0,
    created_at      timestamptz not null default now()
);

comment on table idmerge.projects is 'One row per project; id_merge is fixed once the project holds events.';
comment on column idmerge.projects.name is 'Project name, as given to --project.';
comment on column idmerge.projects.id_merge is 'ID Merge API: simplified, original or legacy (alias only).';
comment on column idmerge.projects.token is 'Project token, sent by SDKs in properties.token.';
comment on column idmerge.projects.api_secret_hash is 'SHA-256 (hex) of the API secret; the secret itself is never stored.';
comment on column idmerge.projects.cluster_cap is 'Original API: the most ids one identity cluster may hold (Mixpanel O-R7).';
comment on column idmerge.projects.last_seq is 'Highest ingest sequence number given to an event of this project.';

-- One row per stored event, partitioned by event time (one partition per month, created as
-- imports need them).
create table idmerge.events (
    project_id            integer not null,
    time                  timestamptz not null,
    seq                   bigint not null,
    batch_id              bigint not null,
    event                 text not null,
    insert_id             text not null,
    ingested_distinct_id  text not null,
    device_id             text,
    user_id               text,
    distinct_id           text not null,
    resolved_seq          bigint not null default 0,
    identity_failure_reason text,
    identity_failure_description text,
    properties            jsonb not null,
    distinct_id_before_identity text generated always as (
        case when distinct_id <> ingested_distinct_id then ingested_distinct_id end
    ) stored
) partition by range (time);

comment on table idmerge.events is 'One row per stored event. distinct_id is rewritten by the nightly job; read idmerge.resolved_events for identities that are always live.';
comment on column idmerge.events.project_id is 'The project (idmerge.projects.id).';
comment on column idmerge.events.time is 'Event time, UTC, to the millisecond.';
comment on column idmerge.events.seq is 'Ingest sequence number: arrival order within the project, file order within an import.';
comment on column idmerge.events.batch_id is 'The import batch that stored this copy (idmerge.import_batches.id).';
comment on column idmerge.events.event is 'Event name.';
comment on column idmerge.events.insert_id is '$insert_id as sent, or derived from a hash of the event when missing.';
comment on column idmerge.events.ingested_distinct_id is 'The distinct_id derived at ingest ($user_id, else $device: + $device_id, else distinct_id); never changes.';
comment on column idmerge.events.device_id is '$device_id (without the $device: prefix), when valid.';
comment on column idmerge.events.user_id is '$user_id, when valid.';
comment on column idmerge.events.distinct_id is 'Resolved (canonical) distinct_id as of resolved_seq: set at ingest, rewritten by the nightly job.';
comment on column idmerge.events.resolved_seq is 'Sequence number of the identity mapping that distinct_id reflects (0: none).';
comment on column idmerge.events.identity_failure_reason is '$identity_failure_reason (simplified) or $failure_reason (original), set at ingest.';
comment on column idmerge.events.identity_failure_description is '$failure_description (original API).';
comment on column idmerge.events.properties is 'The event''s properties, whole, as sent.';
comment on column idmerge.events.distinct_id_before_identity is '$distinct_id_before_identity: the ingested distinct_id when distinct_id differs from it.';

-- Duplicates (Mixpanel D1): same project, event, ingested distinct_id, time and $insert_id.
-- Its leading columns also serve lookups by ingested id (the nightly rewrite, activity feeds).
create unique index events_dedup_key on idmerge.events
    (project_id, ingested_distinct_id, time, insert_id, event);
