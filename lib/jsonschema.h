/* jsonschema: the subset of JSON Schema that OpenAI function definitions use,
 * to check a tool call's arguments before they become training data.
 *
 * Keywords: type (a name or a list; "integer" is a number with no fraction),
 * properties, required, additionalProperties (false or a schema), enum,
 * const, items, minItems/maxItems, minimum/maximum, exclusiveMinimum/
 * exclusiveMaximum (numbers), minLength/maxLength (in characters), pattern
 * (PCRE2, unanchored as JSON Schema says), anyOf. Other keywords
 * (description, title, default, format ...) are accepted and ignored.
 *
 * Values and schemas are not consumed.
 */
#ifndef LORAPIPE_JSONSCHEMA_H
#define LORAPIPE_JSONSCHEMA_H

#include <jv.h>

#include "msg.h"

/* Checks that schema is a schema of this subset: 0, or -1 with err naming
 * the place ("properties.limit.type: unknown type \"int\""). */
int jsonschema_check(jv schema, struct err *err);

/* Validates value against schema: 0, or -1 with err naming the place
 * ("card_last4: expected a string, got a number"); `where` prefixes the
 * place ("arguments"). */
int jsonschema_validate(jv schema, jv value, const char *where, struct err *err);

#endif
