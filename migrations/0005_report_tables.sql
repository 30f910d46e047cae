-- 0005: derived tables for reports, kept by the nightly job (decisions.md, Funnels: "Reports
-- may read derived tables that the nightly job maintains ... provided the answers stay
-- exact between runs").
--
-- They hold the live view (idmerge.resolved_events) as it was when they were built, up to
-- the project's ingest sequence as_of_seq. What changed since (events with a higher seq,
-- identity mappings with a higher seq) names the people whose rows are stale; reports read
-- those people from the live view and everyone else from these tables
-- (sql/150_report_tables.sql).

-- One row per project whose derived tables exist.
create table idmerge.report_state (
    project_id  integer primary key references idmerge.projects (id),
    as_of_seq   bigint not null,
    built_at    timestamptz not null default now(),
    people      bigint not null default 0,
    newest_ms   bigint
);

comment on table idmerge.report_state is 'Derived report tables of a project: the ingest sequence they reflect.';
comment on column idmerge.report_state.as_of_seq is 'The derived tables hold every event with seq <= as_of_seq, identities resolved through every mapping with seq <= as_of_seq.';
comment on column idmerge.report_state.built_at is 'When the tables were last refreshed.';
comment on column idmerge.report_state.newest_ms is 'The newest event time (epoch milliseconds) among the events up to as_of_seq.';
comment on column idmerge.report_state.people is 'People (resolved distinct_ids) in the derived tables.';

-- One row per (ingested distinct_id, resolved distinct_id) pair of the derived events: whom
-- an id's events belonged to when the tables were built.
create table idmerge.report_person_ids (
    project_id            integer not null,
    ingested_distinct_id  text not null,
    distinct_id           text not null,
    primary key (project_id, ingested_distinct_id, distinct_id)
);

create index report_person_ids_person on idmerge.report_person_ids (project_id, distinct_id);

comment on table idmerge.report_person_ids is 'Derived: the resolved distinct_id of each ingested distinct_id''s events as of report_state.as_of_seq.';

-- One row per person and event name: the times of the person's events of that name.
create table idmerge.report_person_events (
    project_id   integer not null,
    event        text not null,
    distinct_id  text not null,
    first_ms     bigint not null,
    times        bigint[] not null,
    seqs         bigint[] not null,
    person_events text[] not null,
    person_keys  bigint[] not null,
    primary key (project_id, event, distinct_id) include (first_ms)
);

create index report_person_events_person on idmerge.report_person_events (project_id, distinct_id);
create index report_person_events_first on idmerge.report_person_events (project_id, event, first_ms);

comment on table idmerge.report_person_events is 'Derived: per person (resolved distinct_id) and event name, the events'' times (epoch milliseconds) and ingest seqs, ordered by time then seq.';
comment on column idmerge.report_person_events.first_ms is 'times[1]: the first such event.';
comment on column idmerge.report_person_events.person_events is 'The person''s whole timeline, repeated on each of their rows (a funnel then reads one row per person and step, no join): their distinct event names, sorted.';
comment on column idmerge.report_person_events.person_keys is 'The person''s whole timeline: one key per event, (position of its name in person_events - 1) * 2^42 + epoch milliseconds, sorted; so the times of one name are one sorted run.';

-- One row per person and property key: the person's events carrying that key (a value that
-- is not JSON null), with the values.
create table idmerge.report_person_props (
    project_id   integer not null,
    key          text not null,
    distinct_id  text not null,
    times        bigint[] not null,
    seqs         bigint[] not null,
    vals         jsonb[] not null,
    primary key (project_id, key, distinct_id)
);

-- A refresh deletes the stale people's rows by person.
create index report_person_props_person on idmerge.report_person_props (project_id, distinct_id);

comment on table idmerge.report_person_props is 'Derived: per person and property key, the events carrying it (times in epoch milliseconds, seqs, values), ordered by time then seq. Identity keys (time, $insert_id, distinct_id, $device_id, $user_id, token) are left out.';

-- What changed since the derived tables were built is found by ingest sequence. BRIN
-- indexes cost next to nothing at import (seq grows with the table) and let a report find
-- the few newer rows without reading the events.
create index events_seq_brin on idmerge.events using brin (seq);
create index identity_map_seq_brin on idmerge.identity_map using brin (seq);
