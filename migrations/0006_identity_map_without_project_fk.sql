-- 0006: the identity map no longer checks its project with a foreign key.
--
-- Forward-only: once applied, this file never changes (migrate refuses an edited one).
--
-- Why: the check ran once per new link, as a query of idmerge.projects from a trigger, and
-- cost about 12 µs per row: 1.5 s of the 2.5 s a million-event import spent making its 115k
-- device links (BENCHMARKS.md). Nothing deletes or renumbers projects, and every writer of
-- the map is a merge function that has just locked and read the project's row (the advisory
-- lock and projects.last_seq), so the key cannot name a missing project. idmerge.events has
-- never carried this foreign key, for the same reason; the other tables, written a row per
-- batch or per run, keep theirs.

alter table idmerge.identity_map drop constraint identity_map_project_id_fkey;
