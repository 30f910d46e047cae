#ifndef CLIBPQ_SHIM_H
#define CLIBPQ_SHIM_H

#if __has_include(<libpq-fe.h>)
/* pkg-config put -I/usr/include/postgresql on the search path. */
#include <libpq-fe.h>
#elif __has_include(<postgresql/libpq-fe.h>)
/* Debian and Ubuntu without pkg-config or its .pc file. */
#include <postgresql/libpq-fe.h>
#else
#error "libpq headers not found: apt-get install libpq-dev pkg-config"
#endif

/* The PG_DIAG_* field codes are character-literal macros ('C', 'M', ...) that Swift cannot
   import; these helpers export them as functions. */
static inline int clibpq_diag_sqlstate(void) { return PG_DIAG_SQLSTATE; }
static inline int clibpq_diag_severity(void) { return PG_DIAG_SEVERITY_NONLOCALIZED; }
static inline int clibpq_diag_message_primary(void) { return PG_DIAG_MESSAGE_PRIMARY; }
static inline int clibpq_diag_message_detail(void) { return PG_DIAG_MESSAGE_DETAIL; }
static inline int clibpq_diag_message_hint(void) { return PG_DIAG_MESSAGE_HINT; }
static inline int clibpq_diag_constraint_name(void) { return PG_DIAG_CONSTRAINT_NAME; }
static inline int clibpq_diag_table_name(void) { return PG_DIAG_TABLE_NAME; }
static inline int clibpq_diag_column_name(void) { return PG_DIAG_COLUMN_NAME; }

#endif
