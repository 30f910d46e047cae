-- idmerge.profile_fold: folds one profile's updates, in arrival order, into its new state.
-- Grain: one result per profile.
--
-- Call it as idmerge.profile_fold(update order by pos), with the stored profile first
-- (an {"init": true, ...} input); idmerge.profile_step says what each operation does
-- (P-R3..P-R10, P-R13) and what the state holds.

create or replace aggregate idmerge.profile_fold(jsonb) (
    sfunc = idmerge.profile_step,
    stype = jsonb,
    initcond = '{"exists": false, "properties": {}, "created": false, "changed": false, "refused": []}'
);

comment on aggregate idmerge.profile_fold(jsonb) is
    'Applies a profile''s Engage updates, ordered by the caller, to its stored state; see idmerge.profile_step.';
