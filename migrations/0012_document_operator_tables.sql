-- Column documentation for the tables an operator reads by hand (the README and the import
-- summary point at idmerge.refused_records, idmerge.import_batches and idmerge.job_runs), so
-- that `\d+` and BI tools describe every column (docs/style.md: documentation lives in
-- PostgreSQL itself). Comments only: no data or structure changes.

comment on column idmerge.projects.id is 'Project id, referenced as project_id by every other table.';
comment on column idmerge.projects.created_at is 'When the project was created.';

comment on column idmerge.import_batches.id is 'Batch id, as the import summary prints it: (batch N).';
comment on column idmerge.import_batches.project_id is 'The project (idmerge.projects.id).';
comment on column idmerge.import_batches.source is 'What was imported: a file path, - for standard input, or the HTTP endpoint.';
comment on column idmerge.import_batches.started_at is 'When the batch started (its transaction).';
comment on column idmerge.import_batches.finished_at is 'When the batch finished, just before it committed.';

comment on column idmerge.refused_records.id is 'Refusal id.';
comment on column idmerge.refused_records.batch_id is 'The import batch that refused it (idmerge.import_batches.id).';
comment on column idmerge.refused_records.insert_id is 'The record''s $insert_id when it sent a string one (at most 255 characters kept); null otherwise.';
comment on column idmerge.refused_records.refused_at is 'When the batch refused it.';

comment on column idmerge.job_runs.id is 'Run id, as idmerge nightly prints it: nightly run N.';
comment on column idmerge.job_runs.project_id is 'The project (idmerge.projects.id).';
comment on column idmerge.job_runs.job is 'Which job ran: nightly.';
comment on column idmerge.job_runs.started_at is 'When the run started.';
comment on column idmerge.job_runs.finished_at is 'When the run ended; null while it runs (a run killed part-way is closed by the next one).';
comment on column idmerge.job_runs.message is 'Why a failed run failed; null otherwise.';

comment on column idmerge.identity_map.project_id is 'The project (idmerge.projects.id).';
comment on column idmerge.identity_map.created_at is 'When the mapping was first written.';
comment on column idmerge.identity_map.updated_at is 'When the mapping last changed: a merge moved its canonical id, or the nightly job wrote it into the events.';
