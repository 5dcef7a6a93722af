//! `GET /v1/openapi.json`: the API described from the same table the router is built from.

use axum::Json;
use serde_json::{json, Map, Value};

use crate::app::API;

/// The OpenAPI 3.1 document.
pub fn spec() -> Value {
    let mut paths = Map::new();
    for (method, path, summary) in API {
        let params: Vec<Value> = path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        let public = matches!(
            *path,
            "/v1/auth/register" | "/v1/auth/login" | "/v1/openapi.json"
        ) || path.starts_with("/v1/desktop/");
        let mut op = json!({
            "summary": summary,
            "parameters": params,
            "responses": {
                "200": {"description": "success"},
                "default": {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            }
        });
        if !public {
            op["security"] = json!([{"bearer": []}]);
        }
        let entry = paths
            .entry(path.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        entry[*method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "vm-agent host service", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}
        }
    })
}

/// The handler.
pub async fn document() -> Json<Value> {
    Json(spec())
}
