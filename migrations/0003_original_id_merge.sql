-- 0003: the state the Original ID Merge API and the legacy alias mode keep besides the
-- identity map (mixpanel-reference.md section 2, decisions.md "Original API").
--
-- Forward-only: once applied, this file never changes (migrate refuses an edited one).

-- One row per id an original project has seen: the lowest ingest sequence of any event naming
-- it (its own distinct_id, $identified_id, $anon_id, alias or one of $distinct_ids).
-- $merge keeps the canonical id of the cluster whose earliest id was seen first.
create table idmerge.identity_first_seen (
    project_id integer not null references idmerge.projects (id),
    id         text not null,
    first_seq  bigint not null,
    primary key (project_id, id)
);

comment on table idmerge.identity_first_seen is 'Original API: one row per id seen, with the ingest sequence of the first event naming it.';
comment on column idmerge.identity_first_seen.id is 'A distinct_id, as named by an event.';
comment on column idmerge.identity_first_seen.first_seq is 'Lowest ingest sequence of an event naming the id.';

-- One row per id used as the $identified_id of a successful $identify (O-R3 check 3:
-- an anonymous id merged with such an id is identified already).
create table idmerge.identified_ids (
    project_id integer not null references idmerge.projects (id),
    id         text not null,
    seq        bigint not null,
    primary key (project_id, id)
);

comment on table idmerge.identified_ids is 'Original API: one row per id used as the $identified_id of a successful $identify.';
comment on column idmerge.identified_ids.seq is 'Ingest sequence of the first $identify that identified it.';

-- One row per alias value, in original and legacy projects (O-R4, L-R2: a value is an alias
-- once). Legacy projects resolve events through it at ingest, for events that arrive after
-- the alias only (L-R1); it is never written into the identity map, so neither the live view
-- nor the nightly job re-maps earlier events.
create table idmerge.identity_aliases (
    project_id  integer not null references idmerge.projects (id),
    alias       text not null,
    distinct_id text not null,
    target_id   text not null,
    seq         bigint not null,
    created_at  timestamptz not null default now(),
    primary key (project_id, alias)
);

comment on table idmerge.identity_aliases is 'Original and legacy: one row per alias value used by a successful $create_alias.';
comment on column idmerge.identity_aliases.alias is 'The alias value ($create_alias alias).';
comment on column idmerge.identity_aliases.distinct_id is 'The distinct_id the $create_alias named.';
comment on column idmerge.identity_aliases.target_id is 'Legacy: what events sent as the alias are stored under (the distinct_id, resolved when the alias was made). Original: the canonical id at that moment.';
comment on column idmerge.identity_aliases.seq is 'Ingest sequence of the $create_alias; legacy maps only events with a higher sequence.';

-- Cluster members by canonical id: the size check (errManyIDs) and re-pointing a losing
-- cluster read every member of one cluster.
create index identity_map_canonical on idmerge.identity_map (project_id, canonical_id);
