-- 0002: the identity map, import batches, refused records and nightly job runs.

-- One row per mapped id: any ingested distinct_id that resolves to another canonical id.
create table idmerge.identity_map (
    project_id   integer not null references idmerge.projects (id),
    id           text not null,
    canonical_id text not null,
    seq          bigint not null,
    rewritten    boolean not null default false,
    created_at   timestamptz not null default now(),
    updated_at   timestamptz not null default now(),
    primary key (project_id, id)
);

comment on table idmerge.identity_map is 'One row per mapped id: ingested distinct_id -> canonical distinct_id.';
comment on column idmerge.identity_map.id is 'An ingested distinct_id, for example $device:D1.';
comment on column idmerge.identity_map.canonical_id is 'The canonical distinct_id it resolves to (simplified: the $user_id).';
comment on column idmerge.identity_map.seq is 'Ingest sequence number of the event that made (or last changed) this mapping.';
comment on column idmerge.identity_map.rewritten is 'True once the nightly job has written this mapping into idmerge.events.';

create index identity_map_pending on idmerge.identity_map (project_id, seq) where not rewritten;

-- One row per import (a file, standard input, or an HTTP request batch).
create table idmerge.import_batches (
    id           bigserial primary key,
    project_id   integer not null references idmerge.projects (id),
    source       text not null,
    started_at   timestamptz not null default now(),
    finished_at  timestamptz,
    records      bigint not null default 0,
    stored       bigint not null default 0,
    duplicates   bigint not null default 0,
    ignored      bigint not null default 0,
    warnings     bigint not null default 0,
    refused      bigint not null default 0
);

comment on table idmerge.import_batches is 'One row per committed import batch.';
comment on column idmerge.import_batches.records is 'Records read from the source.';
comment on column idmerge.import_batches.stored is 'Events stored (new, or replacing an earlier copy).';
comment on column idmerge.import_batches.duplicates is 'Records that duplicated an event already stored or earlier in the batch (the latest copy wins).';
comment on column idmerge.import_batches.ignored is 'Records dropped on purpose ($ignore).';
comment on column idmerge.import_batches.warnings is 'Events stored with an identity warning (placeholder identifiers).';
comment on column idmerge.import_batches.refused is 'Records refused; see idmerge.refused_records.';

-- One row per refused record: nothing is lost.
create table idmerge.refused_records (
    id          bigserial primary key,
    batch_id    bigint not null references idmerge.import_batches (id),
    position    bigint not null,
    position_kind text not null check (position_kind in ('line', 'index')),
    insert_id   text,
    field       text not null,
    reason      text not null,
    raw         text not null,
    refused_at  timestamptz not null default now()
);

comment on table idmerge.refused_records is 'Records an import refused, with where they were, which field and why.';
comment on column idmerge.refused_records.position is '1-based line of an NDJSON source, or 0-based index in a JSON array.';
comment on column idmerge.refused_records.position_kind is 'line or index.';
comment on column idmerge.refused_records.field is 'The offending field, for example properties.time.';
comment on column idmerge.refused_records.reason is 'Why the record was refused.';
comment on column idmerge.refused_records.raw is 'The record as received (text; invalid UTF-8 bytes replaced).';

-- One row per nightly job run.
create table idmerge.job_runs (
    id             bigserial primary key,
    project_id     integer not null references idmerge.projects (id),
    job            text not null default 'nightly',
    started_at     timestamptz not null default now(),
    finished_at    timestamptz,
    links_applied  bigint not null default 0,
    rows_rewritten bigint not null default 0,
    outcome        text not null default 'running' check (outcome in ('running', 'succeeded', 'failed')),
    message        text
);

comment on table idmerge.job_runs is 'One row per nightly run: when, what it applied and how it ended.';
comment on column idmerge.job_runs.links_applied is 'Identity mappings written into the events by this run.';
comment on column idmerge.job_runs.rows_rewritten is 'Event rows whose distinct_id this run rewrote.';
comment on column idmerge.job_runs.outcome is 'running, succeeded or failed (a run killed part-way stays running).';

-- The ID Merge mode is fixed once the project holds events (decisions.md).
create function idmerge.projects_lock_id_merge() returns trigger
language plpgsql as $$
begin
    if new.id_merge is distinct from old.id_merge
       and exists (select 1 from idmerge.events where project_id = old.id) then
        raise exception 'project "%" holds events; its ID Merge API cannot change from % to %',
            old.name, old.id_merge, new.id_merge
            using errcode = 'check_violation';
    end if;
    return new;
end
$$;

create trigger projects_lock_id_merge
    before update of id_merge on idmerge.projects
    for each row execute function idmerge.projects_lock_id_merge();
