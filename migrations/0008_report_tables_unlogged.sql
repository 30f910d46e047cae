-- 0008: the derived report tables (0005, 0007) are UNLOGGED.
--
-- They are a cache of the live view that the nightly job keeps, rebuilt whole when they are
-- missing; nothing in them is the only copy of anything. Logged, an incremental refresh
-- wrote a full-page image of every page it touched first after a checkpoint: 75 to 86 MB
-- of WAL to refresh 2,700 people at 1M events (5 MB without a checkpoint in between), where
-- the identity rewrite of the same links wrote 10 MB. Unlogged, they write none.
--
-- What that costs: after a crash PostgreSQL empties unlogged tables, report_state with the
-- others, so reports read the live view (exact, slower) until the next nightly run rebuilds
-- the tables; a base backup restores them empty in the same way. A hot standby cannot read
-- unlogged tables at all: the report functions treat a server in recovery as one with no
-- derived tables (sql/150_report_tables.sql), so reports on a standby read the live view.
-- report_replaced_ids stays logged: imports write it, and it must survive what they commit.

alter table idmerge.report_state set unlogged;
alter table idmerge.report_person_ids set unlogged;
alter table idmerge.report_person_events set unlogged;
alter table idmerge.report_person_props set unlogged;
alter table idmerge.report_event_names set unlogged;
