-- 0004: user profiles (Engage operations, mixpanel-reference.md section 3).
--
-- Forward-only: once applied, this file never changes (migrate refuses an edited one).
-- Profile imports reuse idmerge.import_batches (source 'profiles:FILE') and
-- idmerge.refused_records; idmerge.apply_profile_updates (sql/) writes this table.

-- One row per profile: the distinct_id it is keyed by (literally in simplified and legacy
-- projects, P-R15; the canonical id at apply time in original projects, P-R16).
create table idmerge.profiles_store (
    project_id     integer not null references idmerge.projects (id),
    distinct_id    text not null,
    properties     jsonb not null default '{}',
    last_seen_at   timestamptz,
    created_at     timestamptz not null default now(),
    updated_at     timestamptz not null default now(),
    batch_id       bigint not null references idmerge.import_batches (id),
    primary key (project_id, distinct_id)
);

comment on table idmerge.profiles_store is 'One row per user profile; read idmerge.profiles, which hides profiles merged away in original projects.';
comment on column idmerge.profiles_store.project_id is 'The project (idmerge.projects.id).';
comment on column idmerge.profiles_store.distinct_id is 'The $distinct_id the profile is keyed by.';
comment on column idmerge.profiles_store.properties is 'Profile properties after every operation applied so far ($set, $add, ...).';
comment on column idmerge.profiles_store.last_seen_at is '$last_seen: time of the latest update without $ignore_time (P-R13); null when none.';
comment on column idmerge.profiles_store.created_at is 'When the profile was created (again, after a $delete).';
comment on column idmerge.profiles_store.updated_at is 'When an import last changed the profile.';
comment on column idmerge.profiles_store.batch_id is 'The import batch that last changed the profile (idmerge.import_batches.id).';
