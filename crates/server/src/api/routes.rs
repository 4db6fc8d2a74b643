//! A router that records what it routes, so that the API's OpenAPI document
//! (`GET /v2/openapi.json`) is generated from the same calls that build the router: a path is
//! in the document because it is routed. Each route names its methods with a summary; the
//! test `every_routed_method_is_documented_and_no_other` (`tests/openapi.rs`) sends every
//! method to every path and checks that exactly the documented ones are routed, so the
//! methods cannot drift either.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::http::Method;
use axum::routing::MethodRouter;
use axum::Router;
use serde_json::{json, Value};

use crate::App;

/// One documented operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    pub method: Method,
    pub path: String,
    /// The group it is listed under (`clusters`, `admin`, `provisioner`, ...).
    pub tag: &'static str,
    pub summary: String,
}

/// Tags whose operations need no Coopr identity headers.
const PUBLIC_TAGS: [&str; 2] = ["health", "console"];
/// Tags of the internal port's calls that the API port also serves (they carry the cluster
/// secret, not a user's key).
const INTERNAL_TAGS: [&str; 1] = ["internal"];

/// A router with the operations it routes.
pub struct Routes {
    tag: &'static str,
    router: Router<Arc<App>>,
    operations: Vec<Operation>,
}

impl Routes {
    /// Routes listed under `tag`.
    pub fn new(tag: &'static str) -> Routes {
        Routes {
            tag,
            router: Router::new(),
            operations: Vec::new(),
        }
    }

    /// Routes `path` to `handler`, whose methods `operations` names, each with a summary.
    pub fn route<S: AsRef<str>>(
        mut self,
        path: &str,
        handler: MethodRouter<Arc<App>>,
        operations: &[(Method, S)],
    ) -> Routes {
        self.router = self.router.route(path, handler);
        for (method, summary) in operations {
            self.operations.push(Operation {
                method: method.clone(),
                path: path.to_string(),
                tag: self.tag,
                summary: summary.as_ref().to_string(),
            });
        }
        self
    }

    /// Adds another group's routes.
    pub fn merge(mut self, other: Routes) -> Routes {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }

    pub fn into_parts(self) -> (Router<Arc<App>>, Vec<Operation>) {
        (self.router, self.operations)
    }
}

/// The OpenAPI 3 document of `operations`.
pub fn openapi(operations: &[Operation]) -> Value {
    let mut paths: BTreeMap<&str, serde_json::Map<String, Value>> = BTreeMap::new();
    for op in operations {
        let parameters: Vec<Value> = op
            .path
            .split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
            })
            .collect();
        let security = if PUBLIC_TAGS.contains(&op.tag) {
            json!([])
        } else if INTERNAL_TAGS.contains(&op.tag) {
            json!([{"clusterSecret": []}])
        } else {
            json!([{"userId": [], "tenantId": [], "apiKey": []}])
        };
        let method = op.method.as_str().to_ascii_lowercase();
        let operation_id = format!(
            "{method}{}",
            op.path
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|s| !s.is_empty())
                .map(|s| format!("_{s}"))
                .collect::<String>()
        );
        paths.entry(&op.path).or_default().insert(
            method,
            json!({
                "tags": [op.tag],
                "summary": op.summary,
                "operationId": operation_id,
                "parameters": parameters,
                "security": security,
                "responses": {
                    "200": {"description": "Done; the body is the result (JSON, unless the summary says otherwise)."},
                    "default": {
                        "description": "Refused: a 4xx with a stable code (changes nothing), or a 5xx.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
                    }
                }
            }),
        );
    }
    let mut tags: Vec<&str> = operations.iter().map(|op| op.tag).collect();
    tags.dedup();
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "coopr",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Cluster provisioning, hot-hot across datacenters. The user and admin APIs follow Coopr's v2 REST API; the provisioner API is what provisioner workers call."
        },
        "tags": tags.iter().map(|t| json!({"name": t})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "userId": {"type": "apiKey", "in": "header", "name": "Coopr-UserID"},
                "tenantId": {"type": "apiKey", "in": "header", "name": "Coopr-TenantID"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "Coopr-ApiKey"},
                "clusterSecret": {"type": "apiKey", "in": "header", "name": "Coopr-Cluster-Secret"}
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "description": "Stable, snake_case (e.g. not_found, invalid_field)."},
                        "message": {"type": "string"}
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parameters_and_security_come_from_the_operations() {
        let ops = [
            Operation {
                method: Method::GET,
                path: "/v2/clusters/{id}/plans/{job}".into(),
                tag: "clusters",
                summary: "A job's plan".into(),
            },
            Operation {
                method: Method::DELETE,
                path: "/v2/clusters/{id}/plans/{job}".into(),
                tag: "clusters",
                summary: "x".into(),
            },
            Operation {
                method: Method::GET,
                path: "/ready".into(),
                tag: "health",
                summary: "Ready?".into(),
            },
        ];
        let doc = openapi(&ops);
        let get = &doc["paths"]["/v2/clusters/{id}/plans/{job}"]["get"];
        assert_eq!(get["operationId"], "get_v2_clusters_id_plans_job");
        assert_eq!(
            get["parameters"]
                .as_array()
                .map(|p| p.iter().map(|p| p["name"].clone()).collect::<Vec<_>>()),
            Some(vec![json!("id"), json!("job")])
        );
        assert_eq!(get["security"][0]["apiKey"], json!([]));
        assert!(doc["paths"]["/v2/clusters/{id}/plans/{job}"]["delete"].is_object());
        assert_eq!(doc["paths"]["/ready"]["get"]["security"], json!([]));
        assert_eq!(
            doc["tags"],
            json!([{"name": "clusters"}, {"name": "health"}])
        );
    }
}
