-- 0009: duplicates replaced in place, for the derived report tables.
--
-- The derived tables (0005) find what changed since as_of_seq by ingest sequence: new
-- events and new identity mappings carry a higher seq, and so does a duplicate that replaces
-- a stored event in a simplified project. In original and legacy projects a replacing copy
-- keeps the stored event's sequence (identity there depends on arrival order, so an event
-- takes effect once, at its first arrival), and its new properties would go unnoticed: the
-- reports would read the replaced copy from the tables, and a refresh would never rewrite
-- it. Those merges record here the ingested distinct_id of every replacing copy, marked with
-- a sequence number of the replacing batch, so idmerge.report_changed_ids finds it.

-- One row per ingested distinct_id and import batch that replaced one of its events.
create table idmerge.report_replaced_ids (
    project_id            integer not null references idmerge.projects (id),
    ingested_distinct_id  text not null,
    seq                   bigint not null,
    primary key (project_id, seq, ingested_distinct_id)
);

comment on table idmerge.report_replaced_ids is 'Ingested distinct_ids whose stored events a later copy replaced in place (original and legacy projects), with a seq of the replacing batch: changed for the derived report tables when seq > report_state.as_of_seq.';
comment on column idmerge.report_replaced_ids.seq is 'The first ingest sequence number of the replacing batch (greater than the as_of_seq of any refresh that did not see it).';
