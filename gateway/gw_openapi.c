/*
 * gw_openapi.c - GET /v1/openapi.yaml: the OpenAPI description of the API.
 *
 * The document is docs/openapi.yaml, turned into a byte array at build
 * time (the Makefile writes $(BUILD)/gen/openapi_yaml.c), so the binary
 * always serves the description it was built with and reads no file at
 * run time (the container's root filesystem is read-only).
 *
 * SECURITY: unauthenticated by design; the document holds no secrets.
 */
#include "gateway/gw.h"

#include <stdlib.h>
#include <string.h>

/* Defined in the generated $(BUILD)/gen/openapi_yaml.c. */
extern const unsigned char gw_openapi_yaml[];
extern const size_t gw_openapi_yaml_len;

void gw_openapi(struct gw_req *req, struct gw_resp *resp)
{
    /* resp->text is owned by the response and freed once sent: a copy. */
    char *text = malloc(gw_openapi_yaml_len + 1);
    if (!text) {
        gw_error(resp, 500, "internal", NULL, "out of memory");
        return;
    }
    memcpy(text, gw_openapi_yaml, gw_openapi_yaml_len);
    text[gw_openapi_yaml_len] = '\0';
    resp->status = 200;
    resp->text = text;
    resp->text_type = "application/yaml; charset=utf-8";
}
