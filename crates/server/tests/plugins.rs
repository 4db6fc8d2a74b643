//! Coopr's plugins against a real server: plugin specifications registered as the Ruby
//! provisioner registers them and read by tenants; plugin resources uploaded, staged, synced,
//! fetched by the provisioner (bytes and checksum), recalled and deleted, with Coopr's statuses;
//! the refusals with their status and code; and, across three DCs, a resource uploaded at one
//! DC fetched at another.

mod common;

use common::dcs::{converged, Deployment};
use common::{wait_for, Auth, Client, TestServer};
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn demo_admin() -> Auth {
    Auth::of("admin", "demo", "demo-admin-key")
}

/// The `chef-solo` entry of the provisioner's `chef_solo_automator.json`, as it is PUT
/// (`pluginmanager.rb`: `JSON.generate(jsondata[automatortype])`, `classname` included).
fn chef_solo() -> Value {
    json!({
        "name": "chef-solo",
        "classname": "ChefSoloAutomator",
        "resourceTypes": {
            "cookbooks": {"format": "archive"},
            "data_bags": {"format": "archive"},
            "roles": {"format": "file"}
        },
        "parameters": {"admin": {
            "fields": {
                "run_list": {"label": "run-list", "override": false, "type": "text",
                             "tip": "The chef-solo run-list for this action"},
                "json_attributes": {"label": "JSON attributes", "override": false, "type": "text",
                                    "tip": "Custom JSON data for this chef-solo run"}
            },
            "required": [["run_list"]]
        }}
    })
}

/// The `shell` entry of `shell_automator.json`.
fn shell() -> Value {
    json!({
        "name": "shell",
        "classname": "ShellAutomator",
        "resourceTypes": {
            "scripts": {"format": "file", "permissions": "0755"},
            "archives": {"format": "archive"}
        },
        "parameters": {"admin": {
            "fields": {"script": {"label": "Script", "override": false, "type": "text",
                                  "tip": "The script or command to run"}},
            "required": [["script"]]
        }}
    })
}

/// A provider type as the fog provider registers it.
fn fog() -> Value {
    json!({"name": "aws", "classname": "FogProviderAWS",
           "resourceTypes": {"keys": {"format": "file", "permissions": "0400"}},
           "parameters": {"admin": {"fields": {"region": {"label": "Region", "type": "text"}}}}})
}

/// Registers the plugins as the provisioner does: `PUT` with the superadmin's key.
async fn register(client: &Client) {
    for (kind, name, spec) in [
        ("automatortypes", "chef-solo", chef_solo()),
        ("automatortypes", "shell", shell()),
        ("providertypes", "aws", fog()),
    ] {
        client
            .prov(Method::PUT, &format!("/v2/plugins/{kind}/{name}"), spec)
            .await
            .assert_ok();
    }
}

const COOKBOOKS: &str = "/v2/plugins/automatortypes/chef-solo/cookbooks";

async fn upload(client: &Client, path: &str, auth: &Auth, bytes: &[u8]) -> common::Reply {
    client
        .raw(Method::POST, path, auth, &[], Some(bytes.to_vec()))
        .await
}

/// The provisioner's download (`resourcemanager.rb::fetch_resource`): raw bytes.
async fn fetch(client: &Client, tenant: &str, resource: &str, version: u32) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!(
            "{}/v2/tenants/{tenant}/{resource}/versions/{version}",
            client.base
        ))
        .header("Coopr-UserID", "admin")
        .header("Coopr-TenantID", tenant)
        .header("Coopr-ApiKey", "admin-key")
        .send()
        .await
        .expect("fetch")
}

/// The demo tenant's internal ID (what the provisioner is given), from the state dump.
async fn demo_tenant_id(client: &Client) -> String {
    let dump = client.get("/v2/admin/dump", &Auth::Superadmin).await;
    dump.assert_ok()[u32::MAX.to_string()]["tenants"]["demo"]["id"]
        .as_str()
        .expect("tenant id")
        .to_string()
}

fn versions(reply: &common::Reply) -> Vec<(u64, String)> {
    reply
        .assert_ok()
        .as_array()
        .expect("array")
        .iter()
        .map(|m| {
            (
                m["version"].as_u64().unwrap(),
                m["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Plugin types registered by the provisioner (superadmin key, no user headers) are listed and
/// read by every tenant, in Coopr's shape (the provisioner's `classname` dropped); each
/// registration is a new version; only the superadmin writes or deletes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_types_are_registered_by_the_provisioner_and_read_by_tenants() {
    let server = TestServer::start().await;
    let client = &server.client;
    register(client).await;

    let list = client.get("/v2/plugins/automatortypes", &Auth::Demo).await;
    let names: Vec<&str> = list
        .assert_ok()
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["chef-solo", "shell"]);
    let chef = client
        .get("/v2/plugins/automatortypes/chef-solo", &Auth::Demo)
        .await;
    let chef = chef.assert_ok();
    assert_eq!(
        chef["resourceTypes"]["cookbooks"],
        json!({"format": "archive"})
    );
    assert_eq!(
        chef["parameters"]["admin"]["required"],
        json!([["run_list"]])
    );
    assert!(chef.get("classname").is_none(), "{chef}");
    assert_eq!(chef["version"], 1);
    let providers = client.get("/v2/plugins/providertypes", &Auth::Demo).await;
    assert_eq!(providers.assert_ok()[0]["name"], "aws");

    // Registering again (a provisioner restart) writes version 2; version 1 stays readable.
    register(client).await;
    let again = client
        .get("/v2/plugins/automatortypes/chef-solo", &Auth::Demo)
        .await;
    assert_eq!(again.assert_ok()["version"], 2);
    let first = client
        .get("/v2/plugins/automatortypes/chef-solo/1", &Auth::Demo)
        .await;
    assert_eq!(first.assert_ok()["version"], 1);

    // Refusals: unknown type 404, name mismatch and bad names 400, non-superadmin 403.
    let missing = client
        .get("/v2/plugins/automatortypes/puppet", &Auth::Demo)
        .await;
    assert_eq!(missing.assert_error(404), "not_found");
    let mismatch = client
        .prov(Method::PUT, "/v2/plugins/automatortypes/other", shell())
        .await;
    assert_eq!(mismatch.assert_error(400), "name_mismatch");
    let bad = client
        .prov(
            Method::PUT,
            "/v2/plugins/automatortypes/bad%20name",
            json!({"name": "bad name"}),
        )
        .await;
    assert_eq!(bad.assert_error(400), "invalid_name");
    let tenant_admin = client
        .put("/v2/plugins/automatortypes/shell", &demo_admin(), shell())
        .await;
    assert_eq!(tenant_admin.assert_error(403), "forbidden");
    let user = client
        .delete("/v2/plugins/automatortypes/shell", &Auth::Demo)
        .await;
    assert_eq!(user.assert_error(403), "forbidden");

    // The superadmin deletes one (200, also when it is gone already).
    client
        .delete("/v2/plugins/automatortypes/shell", &Auth::Superadmin)
        .await
        .assert_ok();
    client
        .delete("/v2/plugins/automatortypes/shell", &Auth::Superadmin)
        .await
        .assert_ok();
    let gone = client
        .get("/v2/plugins/automatortypes/shell", &Auth::Demo)
        .await;
    assert_eq!(gone.assert_error(404), "not_found");
    server.stop().await;
}

/// One cookbook through Coopr's life cycle: uploaded twice (versions 1 and 2, inactive), the
/// first staged then synced (active), fetched by the provisioner with the uploaded bytes and
/// their SHA-256 (by the tenant's ID, and its name), staging version 2 recalls version 1, a
/// sync swaps them; only inactive versions are deleted (409 otherwise), and the listing's
/// status filter follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_is_uploaded_staged_synced_fetched_recalled_and_deleted() {
    let server = TestServer::start().await;
    let client = &server.client;
    register(client).await;
    let admin = demo_admin();
    let hadoop = format!("{COOKBOOKS}/hadoop");
    let v1: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let v2 = b"hadoop cookbook, version 2".to_vec();

    let up = upload(client, &hadoop, &admin, &v1).await;
    assert_eq!(
        up.assert_ok(),
        &json!({"name": "hadoop", "version": 1, "status": "inactive"})
    );
    let up = upload(client, &hadoop, &admin, &v2).await;
    assert_eq!(up.assert_ok()["version"], 2);
    let listed = client.get(&hadoop, &admin).await;
    assert_eq!(
        versions(&listed),
        [(2, "inactive".into()), (1, "inactive".into())]
    );

    client
        .post(&format!("{hadoop}/versions/1/stage"), &admin, Value::Null)
        .await
        .assert_ok();
    let staged = client
        .get(&format!("{COOKBOOKS}?status=staged"), &admin)
        .await;
    assert_eq!(
        staged.assert_ok(),
        &json!({"hadoop": [{"name": "hadoop", "version": 1, "status": "staged"}]})
    );
    client
        .post("/v2/plugins/sync", &admin, Value::Null)
        .await
        .assert_ok();
    let active = client.get(&format!("{hadoop}?status=ACTIVE"), &admin).await;
    assert_eq!(versions(&active), [(1, "active".into())]);

    // The provisioner fetches the bytes, by tenant ID as Coopr's provisioner does.
    let id = demo_tenant_id(client).await;
    let answer = fetch(client, &id, "automatortypes/chef-solo/cookbooks/hadoop", 1).await;
    assert_eq!(answer.status(), 200);
    let sha = format!("{:x}", Sha256::digest(&v1));
    assert_eq!(
        answer.headers()["etag"].to_str().unwrap(),
        format!("\"{sha}\"")
    );
    let bytes = answer.bytes().await.unwrap();
    assert_eq!(format!("{:x}", Sha256::digest(&bytes)), sha);
    assert_eq!(&bytes[..], &v1[..]);
    let by_name = fetch(
        client,
        "demo",
        "automatortypes/chef-solo/cookbooks/hadoop",
        2,
    )
    .await;
    assert_eq!(by_name.bytes().await.unwrap(), v2);
    let missing = fetch(client, &id, "automatortypes/chef-solo/cookbooks/hadoop", 9).await;
    assert_eq!(missing.status(), 404);
    let unauthenticated = reqwest::Client::new()
        .get(format!(
            "{}/v2/tenants/{id}/automatortypes/chef-solo/cookbooks/hadoop/versions/1",
            client.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);

    // An active version cannot be deleted, nor can the resource.
    let busy = client.delete(&format!("{hadoop}/versions/1"), &admin).await;
    assert_eq!(busy.assert_error(409), "resource_not_inactive");
    let busy = client.delete(&hadoop, &admin).await;
    assert_eq!(busy.assert_error(409), "resource_not_inactive");

    // Staging version 2 recalls version 1; a sync swaps them.
    client
        .post(&format!("{hadoop}/versions/2/stage"), &admin, Value::Null)
        .await
        .assert_ok();
    let both = client.get(&hadoop, &admin).await;
    assert_eq!(
        versions(&both),
        [(2, "staged".into()), (1, "recalled".into())]
    );
    client
        .post("/v2/plugins/sync", &admin, Value::Null)
        .await
        .assert_ok();
    let both = client.get(&hadoop, &admin).await;
    assert_eq!(
        versions(&both),
        [(2, "active".into()), (1, "inactive".into())]
    );

    // Version 1 goes; version 2 is recalled, synced out, then the resource goes.
    client
        .delete(&format!("{hadoop}/versions/1"), &admin)
        .await
        .assert_ok();
    client
        .post(&format!("{hadoop}/versions/2/recall"), &admin, Value::Null)
        .await
        .assert_ok();
    let recalled = client
        .get(&format!("{COOKBOOKS}?status=recalled"), &admin)
        .await;
    assert_eq!(recalled.assert_ok()["hadoop"][0]["version"], 2);
    client
        .post("/v2/plugins/sync", &admin, Value::Null)
        .await
        .assert_ok();
    client.delete(&hadoop, &admin).await.assert_ok();
    let gone = client.get(&hadoop, &admin).await;
    assert_eq!(gone.assert_error(404), "not_found");
    let gone = fetch(client, &id, "automatortypes/chef-solo/cookbooks/hadoop", 2).await;
    assert_eq!(gone.status(), 404);
    // Nothing of the bytes is left in the global shard.
    let dump = client.get("/v2/admin/dump", &Auth::Superadmin).await;
    assert!(dump.assert_ok()[u32::MAX.to_string()]
        .get("resource_blobs")
        .is_none());
    server.stop().await;
}

/// Refusals, each with its status and code: unknown plugin or resource type 404, bad names,
/// versions and filters 400, non-admin 403, unknown version 404, and an upload above
/// `MAX_RESOURCE_BYTES` 413 `resource_too_large` while one at the limit is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_refusals_have_their_status_and_code() {
    let server = TestServer::start().await;
    let client = &server.client;
    register(client).await;
    let admin = demo_admin();

    let cases = [
        (
            "/v2/plugins/automatortypes/puppet/modules/x",
            404,
            "not_found",
        ),
        (
            "/v2/plugins/automatortypes/chef-solo/recipes/x",
            404,
            "not_found",
        ),
        (
            "/v2/plugins/providertypes/aws/cookbooks/x",
            404,
            "not_found",
        ),
        (
            "/v2/plugins/automatortypes/chef-solo/cookbooks/bad%20name",
            400,
            "invalid_name",
        ),
    ];
    for (path, status, code) in cases {
        let reply = upload(client, path, &admin, b"x").await;
        assert_eq!(reply.assert_error(status), code, "{path}");
    }
    let user = upload(client, &format!("{COOKBOOKS}/x"), &Auth::Demo, b"x").await;
    assert_eq!(user.assert_error(403), "forbidden");
    let user = client.get(COOKBOOKS, &Auth::Demo).await;
    assert_eq!(user.assert_error(403), "forbidden");
    let user = client
        .post("/v2/plugins/sync", &Auth::Demo, Value::Null)
        .await;
    assert_eq!(user.assert_error(403), "forbidden");
    let filter = client
        .get(&format!("{COOKBOOKS}?status=lively"), &admin)
        .await;
    assert_eq!(filter.assert_error(400), "invalid_status");

    upload(client, &format!("{COOKBOOKS}/x"), &admin, b"x")
        .await
        .assert_ok();
    let version = client
        .post(
            &format!("{COOKBOOKS}/x/versions/zero/stage"),
            &admin,
            Value::Null,
        )
        .await;
    assert_eq!(version.assert_error(400), "invalid_version");
    let unknown = client
        .post(
            &format!("{COOKBOOKS}/x/versions/7/stage"),
            &admin,
            Value::Null,
        )
        .await;
    assert_eq!(unknown.assert_error(404), "not_found");
    let unknown = client
        .delete(&format!("{COOKBOOKS}/x/versions/7"), &admin)
        .await;
    assert_eq!(unknown.assert_error(404), "not_found");

    // At the limit and one byte above it.
    let limit = coopr_state::MAX_RESOURCE_BYTES;
    let big = upload(client, &format!("{COOKBOOKS}/big"), &admin, &vec![7; limit]).await;
    assert_eq!(big.assert_ok()["version"], 1);
    let over = upload(
        client,
        &format!("{COOKBOOKS}/big"),
        &admin,
        &vec![7; limit + 1],
    )
    .await;
    assert_eq!(over.assert_error(413), "resource_too_large");
    let listed = client.get(&format!("{COOKBOOKS}/big"), &admin).await;
    assert_eq!(versions(&listed), [(1, "inactive".into())]);
    server.stop().await;
}

/// The tenant quota (`MAX_TENANT_RESOURCE_BYTES`, every version counted) refuses the upload
/// that would pass it with 409 `resource_quota_exceeded`; deleting a version frees its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_store_more_than_its_resource_quota() {
    let server = TestServer::start().await;
    let client = &server.client;
    register(client).await;
    let admin = demo_admin();
    let limit = coopr_state::MAX_RESOURCE_BYTES;
    let quota = coopr_state::MAX_TENANT_RESOURCE_BYTES as usize;
    let path = format!("{COOKBOOKS}/big");
    for i in 0..quota / limit {
        // Different contents: the store holds each once, the quota counts each version.
        let reply = upload(client, &path, &admin, &vec![i as u8; limit]).await;
        reply.assert_ok();
    }
    let over = upload(client, &path, &admin, b"one byte too many").await;
    assert_eq!(over.assert_error(409), "resource_quota_exceeded");
    client
        .delete(&format!("{path}/versions/1"), &admin)
        .await
        .assert_ok();
    upload(client, &path, &admin, b"fits again")
        .await
        .assert_ok();
    server.stop().await;
}

/// With three DCs (a owns the global shard): plugins registered at c and a cookbook uploaded,
/// staged and synced at b are written at a and replicate, bytes included, to every DC; the
/// provisioner of c fetches the same bytes from c's own copy, and every copy equals the owner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_uploaded_at_one_dc_is_fetched_at_another() {
    let deployment = Deployment::start().await;
    let (b, c) = (deployment.dc("b"), deployment.dc("c"));
    register(&c.client).await;
    wait_for("the plugin types to reach b", || async {
        let chef = b
            .get("/v2/plugins/automatortypes/chef-solo", &Auth::Demo)
            .await;
        (chef.status == 200).then_some(())
    })
    .await;
    let admin = demo_admin();
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let hadoop = format!("{COOKBOOKS}/hadoop");
    let up = upload(&b.client, &hadoop, &admin, &bytes).await;
    assert_eq!(up.assert_ok()["version"], 1);
    assert_eq!(up.header("coopr-served-by"), Some("a/a1"));
    b.post(&format!("{hadoop}/versions/1/stage"), &admin, Value::Null)
        .await
        .assert_ok();
    b.post("/v2/plugins/sync", &admin, Value::Null)
        .await
        .assert_ok();

    // The ID from the owner's dump (c holds the global shard as a replica part).
    let id = demo_tenant_id(&deployment.dc("a").client).await;
    let sha = format!("{:x}", Sha256::digest(&bytes));
    wait_for("the cookbook's bytes at c", || async {
        let answer = fetch(
            &c.client,
            &id,
            "automatortypes/chef-solo/cookbooks/hadoop",
            1,
        )
        .await;
        if answer.status() != 200 {
            return None;
        }
        let served_by = answer.headers().get("coopr-served-by").cloned();
        let got = answer.bytes().await.ok()?;
        assert_eq!(format!("{:x}", Sha256::digest(&got)), sha);
        assert!(served_by.is_some_and(|s| s.to_str().unwrap().starts_with("c/")));
        Some(())
    })
    .await;
    wait_for("the sync to reach c", || async {
        let listed = c.get(&hadoop, &admin).await;
        (listed.status == 200 && versions(&listed) == [(1, "active".to_string())]).then_some(())
    })
    .await;
    wait_for("every copy of every shard to equal its owner's", || {
        converged(&deployment)
    })
    .await;
    deployment.stop().await;
}
