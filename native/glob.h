/*
 * glob.h - Graphite glob matching for ONE dot-separated path component.
 *
 * Semantics follow graphite-web 1.1.10's StandardFinder (brace expansion,
 * then Python 3.11 fnmatch.fnmatchcase per variant); see glob.c for details.
 * Patterns and names are (pointer, length) UTF-8 byte strings, never assumed
 * to be NUL-terminated.  A compiled tsm_glob is immutable, so it may be used
 * from several threads at once.
 */
#ifndef TSM_GLOB_H
#define TSM_GLOB_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TSM_GLOB_ENOMEM   (-1)  /* allocation failed */
#define TSM_GLOB_ETOOMANY (-2)  /* brace expansion exceeds the limits below */

/* Limits on brace expansion (exceeding any of them gives TSM_GLOB_ETOOMANY). */
#define TSM_GLOB_MAX_VARIANTS 4096u   /* distinct final variants */

typedef struct tsm_glob tsm_glob;

/* Compile one component pattern. Returns 0 and sets *out, or
 * TSM_GLOB_ENOMEM / TSM_GLOB_ETOOMANY (then *out is set to NULL). */
int tsm_glob_compile(const char *pat, size_t len, tsm_glob **out);

/* Free a compiled glob; NULL is accepted. */
void tsm_glob_free(tsm_glob *g);

/* 1 if any non-globstar variant matches the name s[0..len), else 0. */
int tsm_glob_match(const tsm_glob *g, const char *s, size_t len);

/* 1 if some variant is exactly "**" (the caller's tree walker handles it). */
int tsm_glob_has_globstar(const tsm_glob *g);

/* 1 if every non-globstar variant is literal (contains none of '[', '*', '?'). */
int tsm_glob_is_literal(const tsm_glob *g);

/* 1 if the pattern is exactly "*" after brace expansion (one variant, a
 * single star): it matches every name, so callers may skip matching. */
int tsm_glob_is_star(const tsm_glob *g);

/* Number of distinct literal variants. */
size_t tsm_glob_nliterals(const tsm_glob *g);

/* The i-th literal variant (bytes; also NUL-terminated for convenience) and
 * its length in *len; NULL if i >= tsm_glob_nliterals(g). */
const char *tsm_glob_literal(const tsm_glob *g, size_t i, size_t *len);

#ifdef __cplusplus
}
#endif

#endif /* TSM_GLOB_H */
