//! Macro expansion tests: the cases of Coopr's `ExpressionTest`, `ExpanderTest`, `ParserTest` and
//! `EvaluatorsTest`, the examples of Coopr's macro guide, the bounds, and a seeded fuzz loop.
//! Each case asserts the exact output or the error code.

use std::collections::BTreeMap;

use coopr_engine::macros::{expand_str, expand_value, validate, MacroContext, MacroNode};
use coopr_engine::macros::{MAX_EXPANSION_BYTES, MAX_VALUE_DEPTH};
use coopr_types::{ClusterId, NodeId};
use serde_json::{json, Value};

fn node(
    id: &str,
    nodenum: u32,
    hostname: &str,
    ips: &[(&str, &str)],
    services: &[&str],
) -> MacroNode {
    MacroNode {
        id: NodeId(id.into()),
        nodenum,
        hostname: hostname.to_string(),
        ipaddresses: ips
            .iter()
            .map(|(t, a)| (t.to_string(), a.to_string()))
            .collect::<BTreeMap<_, _>>(),
        services: services.iter().map(|s| (*s).into()).collect(),
    }
}

/// Coopr's `ExpressionTest` cluster: ids sort bar, foo, one, thr, two; nodenums foo 0, bar 5,
/// one 8, two 9, thr 10. `two` has no address, `thr` no hostname. The task runs on `task`.
fn coopr_cluster(task: &str) -> MacroContext {
    MacroContext {
        cluster_owner: "user".to_string(),
        nodes: vec![
            node(
                "foo",
                0,
                "oof",
                &[("access_v4", "9.7.8.4")],
                &["svc1", "svc2"],
            ),
            node("bar", 5, "rab", &[("access_v4", "9.6.8.1")], &["svc1"]),
            node("one", 8, "eno", &[("access_v4", "9.1.3.4")], &["svc1"]),
            node("two", 9, "owt", &[], &["svc2"]),
            node("thr", 10, "", &[("access_v4", "9.6.8.8")], &["svc3"]),
        ],
        task_node: Some(NodeId(task.into())),
    }
}

/// The example of Coopr's macro guide: namenode and hbase-master on hadoop-dev-1001, three
/// ZooKeeper servers on hadoop-dev-1002..1004, with this project's derived node ids.
fn guide_cluster(task_nodenum: u32) -> MacroContext {
    let cluster = ClusterId(71);
    let mut nodes = vec![node(
        "",
        1001,
        "hadoop-dev-1001.local",
        &[("bind_v4", "123.456.0.1"), ("access_v4", "54.0.0.1")],
        &["hadoop-hdfs-namenode", "hbase-master"],
    )];
    for i in 2..=4 {
        nodes.push(node(
            "",
            1000 + i,
            &format!("hadoop-dev-100{i}.local"),
            &[
                ("bind_v4", &format!("123.456.0.{i}")),
                ("access_v4", &format!("54.0.0.{i}")),
            ],
            &["zookeeper-server", "hadoop-hdfs-datanode"],
        ));
    }
    for n in &mut nodes {
        n.id = NodeId::derive(cluster, n.nodenum);
    }
    // The server may hand the nodes over in any order.
    nodes.reverse();
    MacroContext {
        cluster_owner: "alice".to_string(),
        nodes,
        task_node: Some(NodeId::derive(cluster, task_nodenum)),
    }
}

fn expect_ok(context: &MacroContext, cases: &[(&str, &str)]) {
    for (input, expected) in cases {
        assert_eq!(
            expand_str(input, context).as_deref(),
            Ok(*expected),
            "input {input:?} on {:?}",
            context.task_node
        );
    }
}

fn expect_err(context: &MacroContext, cases: &[(&str, &str)]) {
    for (input, code) in cases {
        match expand_str(input, context) {
            Ok(out) => panic!("input {input:?} expanded to {out:?}, expected error {code}"),
            Err(e) => assert_eq!(e.code(), *code, "input {input:?}: {e}"),
        }
    }
}

/// `ExpressionTest`: evaluators, map formats and join separators on Coopr's test cluster.
#[test]
fn coopr_expression_cases() {
    expect_ok(
        &coopr_cluster("foo"),
        &[
            // testNoService: no node has svc4, the macro stays.
            ("%ip.access_v4.service.svc4%", "%ip.access_v4.service.svc4%"),
            ("%cluster.owner%", "user"),
            // testPlain: lists follow node id order (bar, foo, one).
            ("%ip.access_v4.service.svc1%", "9.6.8.1,9.7.8.4,9.1.3.4"),
            ("%instance.self.service.svc1%", "1"),
            ("%host.self%", "oof"),
            // Instances follow nodenum order (foo 0, bar 5, one 8).
            ("%host.service.svc1[0]%", "oof"),
            ("%host.service.svc1[1]%", "rab"),
            ("%ip.access_v4.self%", "9.7.8.4"),
            ("%ip.access_v4.service.svc1[0]%", "9.7.8.4"),
            ("%ip.access_v4.service.svc1[1]%", "9.6.8.1"),
            ("%map(host.service.svc2,'$:2181')%", "oof:2181,owt:2181"),
            ("%join(host.service.svc1,'-')%", "rab-oof-eno"),
            (
                "%join(map(host.service.svc2,'$:2181'),'++')%",
                "oof:2181++owt:2181",
            ),
        ],
    );
    expect_ok(
        &coopr_cluster("bar"),
        &[
            ("%instance.self.service.svc1%", "2"),
            ("%host.self%", "rab"),
            ("%ip.access_v4.self%", "9.6.8.1"),
        ],
    );
    expect_err(
        &coopr_cluster("foo"),
        &[
            // testNoHost: thr has svc3 but no hostname.
            ("%host.service.svc3%", "missing_hostname"),
            // testNoIp: two has svc2 but no access_v4 address.
            ("%ip.access_v4.service.svc2%", "missing_ip"),
            // testOutOfBounds: three nodes have svc1.
            ("%ip.access_v4.service.svc1[3]%", "instance_out_of_range"),
        ],
    );
}

/// `ExpressionTest.testFormatting`: `$` is the value, `$$` a literal `$`.
#[test]
fn coopr_format_cases() {
    let context = MacroContext {
        cluster_owner: "foo".to_string(),
        ..MacroContext::default()
    };
    for (format, expected) in [
        ("", ""),
        ("$", "foo"),
        ("$$", "$"),
        ("$$$", "$foo"),
        ("$ $", "foo foo"),
        ("$:2181", "foo:2181"),
        ("http://$/", "http://foo/"),
    ] {
        let input = format!("%map(cluster.owner,'{format}')%");
        assert_eq!(
            expand_str(&input, &context).as_deref(),
            Ok(expected),
            "{input}"
        );
    }
}

/// `ExpanderTest`: `%%` is no delimiter, macros inside text, JSON trees.
#[test]
fn coopr_expander_cases() {
    assert_eq!(
        validate("zookeeper.quorum = %join(map(host.service.zk,'$:2181'),',')%"),
        Ok(())
    );
    assert_eq!(
        validate("this %% is not a macro, but this is: %host.service.zk%"),
        Ok(())
    );
    expect_ok(
        &coopr_cluster("foo"),
        &[
            (
                "service one: %join(map(host.service.svc1,'$:2181'),',')%",
                "service one: rab:2181,oof:2181,eno:2181",
            ),
            // Coopr copies `%%` through unchanged.
            (
                "this %% is not a macro, but this is: %host.service.svc2%",
                "this %% is not a macro, but this is: oof,owt",
            ),
        ],
    );

    // testExpansionCreatesNewJson
    let input = json!({"host": "%host.service.svc1%"});
    let output = expand_value(&input, &coopr_cluster("bar")).expect("expands");
    assert_eq!(output, json!({"host": "rab,oof,eno"}));
    assert_eq!(input, json!({"host": "%host.service.svc1%"}));

    // testJsonExpansion (the whole tree, not only `defaults.config`: the rest has no macros).
    let template = coopr_template(json!({"invalid-cluster-macro": "%host.service.svc4%"}));
    let output = expand_value(&template, &coopr_cluster("bar")).expect("expands");
    let expected = json!({
        "hadoop": {"core_site": {"fs.defaultFS": "hdfs://rab,oof,eno"}},
        "hbase": {"hbase_site": {
            "hbase.zookeeper.quorum": "oof:2181,owt:2181",
            // bar has no svc2: the self macro stays.
            "dummyvar": "%instance.self.service.svc2%"
        }},
        "zookeeper": {
            "myid": "2",
            "quorum.size": "3",
            "zoocfg": {
                "server.1": "oof:2888:3888",
                "server.2": "rab:2888:3888",
                "server.3": "eno:2888:3888"
            }
        },
        "myapp": {"email": "user@company.net"},
        // testJsonExpansionSkipsUnexpandableMacros
        "invalid-cluster-macro": "%host.service.svc4%"
    });
    assert_eq!(output["defaults"]["config"], expected);
    assert_eq!(
        output["defaults"]["services"],
        template["defaults"]["services"]
    );
    assert_eq!(output["name"], json!("hadoop"));
}

/// The `jsonIn` template of Coopr's `ExpanderTest`, with `extra` merged into its config.
fn coopr_template(extra: Value) -> Value {
    let mut template = json!({
        "name": "hadoop",
        "description": "Hadoop cluster without high-availability",
        "defaults": {
            "services": ["hosts", "hadoop-hdfs-namenode", "zookeeper-server"],
            "provider": "rackspace",
            "config": {
                "hadoop": {"core_site": {"fs.defaultFS": "hdfs://%host.service.svc1%"}},
                "hbase": {"hbase_site": {
                    "hbase.zookeeper.quorum": "%join(map(host.service.svc2,'$:2181'),',')%",
                    "dummyvar": "%instance.self.service.svc2%"
                }},
                "zookeeper": {
                    "myid": "%instance.self.service.svc1%",
                    "quorum.size": "%num.service.svc1%",
                    "zoocfg": {
                        "server.1": "%host.service.svc1[0]%:2888:3888",
                        "server.2": "%host.service.svc1[1]%:2888:3888",
                        "server.3": "%host.service.svc1[2]%:2888:3888"
                    }
                },
                "myapp": {"email": "%cluster.owner%@company.net"}
            }
        }
    });
    let config = template["defaults"]["config"]
        .as_object_mut()
        .expect("an object");
    for (key, value) in extra.as_object().expect("an object") {
        config.insert(key.clone(), value.clone());
    }
    template
}

/// `ParserTest.testParseOK` and `EvaluatorsTest`: every well-formed macro validates.
#[test]
fn coopr_parser_accepts() {
    for text in [
        "host.service.abc",
        "ip.access_v4.service.namenode",
        "ip.bind_v4.service.a-b-c",
        "ip.access_v4.self",
        "ip.self",
        "ip.service.a-b-c",
        "ip.external.service.a.b.c",
        "ip.internal.service.a_b_c",
        "map(ip.access.service.nn,'$:80')",
        "map(ip.access.service.nn,'\"$\"')",
        "map(ip.access.service.nn,\"$:80\")",
        "map(ip.access.service.nn,\"'$'\")",
        "join(ip.access.service.nn,'-')",
        "join(ip.access.service.nn,\"\n\")",
        "join(map(host.service.abc,'$:2181'),',')",
        "host.service.abc[1]",
        "ip.access.service.abc[0]",
        "instance.self.service.abc",
        "num.service.abc",
        "cluster.owner",
        "host.self",
    ] {
        assert_eq!(validate(&format!("%{text}%")), Ok(()), "{text}");
    }
    // The parsed parts, seen through an expansion.
    let context = MacroContext {
        nodes: vec![node(
            "n",
            1,
            "h",
            &[("access", "10.0.0.1"), ("external", "1.2.3.4")],
            &["nn", "a.b.c"],
        )],
        ..MacroContext::default()
    };
    expect_ok(
        &context,
        &[
            ("%map(ip.access.service.nn,'\"$\"')%", "\"10.0.0.1\""),
            ("%map(ip.access.service.nn,\"'$'\")%", "'10.0.0.1'"),
            ("%ip.external.service.a.b.c%", "1.2.3.4"),
            (
                "%join(map(ip.access.service.nn,'$:80'),\"\n\")%",
                "10.0.0.1:80",
            ),
        ],
    );
}

/// `ParserTest.testParseFail` and `EvaluatorsTest`: malformed macros and unknown names.
#[test]
fn coopr_parser_rejects() {
    let syntax = [
        "abc)",
        "abc''",
        "map(,'$!')",
        "map(host.service.abc)",
        "map(host.service.abc,$!)",
        "map(host.service.abc,'$!",
        "map(host.service.abc,'$!'",
        "map(host.service.abc,'$!'))",
        "join(,'-')",
        "join(host.service.abc)",
        "join(host.service.abc,-)",
        "join(host.service.abc,)",
        "join(host.service.abc,'-'",
        "join(host.service.abc,'-'))",
        "join(map(host.service.abc,'-')))",
        "host.service.abc[123",
        "host.service.abc[]",
        "host.service.abc]",
        "host.service.abc[123.0]",
        "host.service.",
        "num.service.",
        "instance.self.service.",
        "ip.service.",
        "ip.access_v4.service.",
        "ip..self",
        // No whitespace inside an expression.
        "join(host.service.abc, '-')",
        " host.service.abc",
        // An instance only applies to host and ip lists (Coopr ignores it).
        "num.service.abc[0]",
        "cluster.owner[1]",
        "instance.self.service.abc[0]",
        "host.self[0]",
        "host.service.abc[99999999999999999999999999]",
    ];
    let unknown = [
        "abc",
        "IP_OF_SERVICE.abc",
        "SERVICE_BULLSHIT_abc",
        "host.service",
        "ip.service",
        "ip.access_v4",
        "ip.access_v4.other.abc",
        "cluster.owner.x",
        "join",
        // In Coopr's guide, not in its code.
        "host.self.service.zookeeper-server",
        "ip.self.service.zookeeper-server",
    ];
    let context = coopr_cluster("foo");
    for (texts, code) in [(&syntax[..], "syntax"), (&unknown[..], "unknown_macro")] {
        for text in texts {
            let input = format!("%{text}%");
            let validated = validate(&input).expect_err(&input);
            assert_eq!(validated.code(), code, "{input}: {validated}");
            let expanded = expand_str(&input, &context).expect_err(&input);
            assert_eq!(expanded, validated, "{input}");
        }
    }
}

/// The examples of Coopr's macro guide (`macros.rst`), on each ZooKeeper node.
#[test]
fn guide_examples() {
    let zookeeper_config = [
        (
            "hdfs://%host.service.hadoop-hdfs-namenode%",
            "hdfs://hadoop-dev-1001.local",
        ),
        ("hdfs://%ip.service.hadoop-hdfs-namenode%", "hdfs://123.456.0.1"),
        (
            "%join(map(host.service.zookeeper-server,'$:2181'),',')%/namespace",
            "hadoop-dev-1002.local:2181,hadoop-dev-1003.local:2181,hadoop-dev-1004.local:2181/namespace",
        ),
        (
            "%join(map(ip.service.zookeeper-server,'$:2181'),',')%/namespace",
            "123.456.0.2:2181,123.456.0.3:2181,123.456.0.4:2181/namespace",
        ),
        (
            "%join(host.service.zookeeper-server,' ')%",
            "hadoop-dev-1002.local hadoop-dev-1003.local hadoop-dev-1004.local",
        ),
        (
            "%host.service.zookeeper-server[0]%:2888:3888",
            "hadoop-dev-1002.local:2888:3888",
        ),
        (
            "%host.service.zookeeper-server[1]%:2888:3888",
            "hadoop-dev-1003.local:2888:3888",
        ),
        (
            "%host.service.zookeeper-server[2]%:2888:3888",
            "hadoop-dev-1004.local:2888:3888",
        ),
        ("%ip.access_v4.service.zookeeper-server[2]%", "54.0.0.4"),
        ("%ip.bind_v4.service.zookeeper-server[0]%", "123.456.0.2"),
        ("%num.service.zookeeper-server%", "3"),
        ("%num.service.hbase-regionserver%", "0"),
        ("%cluster.owner%", "alice"),
    ];
    for nodenum in 1002..=1004 {
        let context = guide_cluster(nodenum);
        expect_ok(&context, &zookeeper_config);
        let me = format!("hadoop-dev-{nodenum}.local");
        let my_id = (nodenum - 1001).to_string();
        let my_ip = format!("123.456.0.{}", nodenum - 1000);
        let my_access = format!("54.0.0.{}", nodenum - 1000);
        expect_ok(
            &context,
            &[
                ("%instance.self.service.zookeeper-server%", &my_id),
                ("%host.self%", &me),
                ("%ip.self%", &my_ip),
                ("%ip.bind_v4.self%", &my_ip),
                ("%ip.access_v4.self%", &my_access),
            ],
        );
    }
    // The namenode's node has no zookeeper-server: its myId macro stays.
    expect_ok(
        &guide_cluster(1001),
        &[(
            "%instance.self.service.zookeeper-server%",
            "%instance.self.service.zookeeper-server%",
        )],
    );
    expect_err(
        &guide_cluster(1002),
        &[
            (
                "%host.service.zookeeper-server[3]%",
                "instance_out_of_range",
            ),
            (
                "%host.service.hbase-regionserver[0]%",
                "instance_out_of_range",
            ),
            ("%ip.internal_v4.service.zookeeper-server%", "missing_ip"),
            ("%ip.internal_v4.self%", "missing_ip"),
        ],
    );
}

/// Delimiters, text around macros, macros left in place, the task node.
#[test]
fn text_and_delimiters() {
    let context = coopr_cluster("foo");
    expect_ok(
        &context,
        &[
            ("", ""),
            ("no macro", "no macro"),
            ("100% sure", "100% sure"),
            ("%", "%"),
            ("%%", "%%"),
            ("%%%cluster.owner%", "%%user"),
            ("a%cluster.owner%b%cluster.owner%c", "auserbuserc"),
            ("%cluster.owner% and 50%%", "user and 50%%"),
            // A macro that cannot be expanded stays, the others expand (Coopr would drop it).
            (
                "%cluster.owner% %host.service.svc4%",
                "user %host.service.svc4%",
            ),
            (
                "%map(host.service.svc4,'$:1')%",
                "%map(host.service.svc4,'$:1')%",
            ),
            ("%num.service.svc4%", "0"),
            // A node that lists a service twice counts once.
            ("%host.service.svc2%", "oof,owt"),
            ("ünïcødé %host.self% ✓", "ünïcødé oof ✓"),
        ],
    );
    expect_err(
        &context,
        &[
            ("50% of 60%", "syntax"),
            ("%a%%b%", "syntax"),
            // `%%` is skipped while looking for the closing `%` too, as in Coopr.
            ("%cluster.owner%%%", "syntax"),
            ("%host.service.svc4[0]%", "instance_out_of_range"),
        ],
    );

    let mut twice = coopr_cluster("foo");
    twice.nodes[0].services.push("svc2".into());
    expect_ok(
        &twice,
        &[
            ("%host.service.svc2%", "oof,owt"),
            ("%num.service.svc2%", "2"),
        ],
    );

    let mut no_hostname = coopr_cluster("thr");
    expect_ok(&no_hostname, &[("%host.self%", "%host.self%")]);
    no_hostname.task_node = None;
    expect_ok(
        &no_hostname,
        &[("%cluster.owner%:%host.service.svc1[0]%", "user:oof")],
    );
    expect_err(
        &no_hostname,
        &[
            ("%host.self%", "no_task_node"),
            ("%ip.self%", "no_task_node"),
            ("%instance.self.service.svc1%", "no_task_node"),
        ],
    );
    no_hostname.task_node = Some(NodeId("gone".into()));
    expect_err(&no_hostname, &[("%host.self%", "no_task_node")]);
    // Without bind_v4 addresses the default ip type is missing.
    expect_err(
        &context,
        &[
            ("%ip.self%", "missing_ip"),
            ("%ip.service.svc1%", "missing_ip"),
        ],
    );
}

/// Errors name the macro and say why.
#[test]
fn error_messages() {
    let context = coopr_cluster("foo");
    let message = |input: &str| expand_str(input, &context).expect_err(input).to_string();
    assert_eq!(
        message("x %host.service.svc1[7]%"),
        "macro '%host.service.svc1[7]%' asks for instance 7 of service 'svc1', but 3 node(s) \
         have it (instances count from 0)"
    );
    assert_eq!(
        message("%ip.access_v4.service.svc2%"),
        "macro '%ip.access_v4.service.svc2%' cannot be expanded: node two has no 'access_v4' address"
    );
    assert_eq!(
        message("%host.nowhere%"),
        "macro '%host.nowhere%' is unknown: 'host.nowhere' is not a macro name"
    );
    assert_eq!(
        message("%join(host.service.svc1,'-'%"),
        "macro '%join(host.service.svc1,'-'%' is malformed: ')' expected at position 26"
    );
    // Long macros are cut in messages.
    let long = format!("%{}%", "x".repeat(10_000));
    assert!(message(&long).len() < 300, "{}", message(&long));
}

/// Keys, numbers, booleans and nulls are untouched; errors come out of nested values.
#[test]
fn json_values() {
    let context = coopr_cluster("bar");
    let input = json!({
        "%cluster.owner%": "%cluster.owner%",
        "list": ["%host.self%", 1, true, null, ["%num.service.svc1%"], {"k": "%%"}],
        "n": 2.5
    });
    assert_eq!(
        expand_value(&input, &context),
        Ok(json!({
            "%cluster.owner%": "user",
            "list": ["rab", 1, true, null, ["3"], {"k": "%%"}],
            "n": 2.5
        }))
    );
    let bad = json!({"a": [{"b": "%host.service.svc3%"}]});
    assert_eq!(
        expand_value(&bad, &context).unwrap_err().code(),
        "missing_hostname"
    );
    assert_eq!(
        expand_value(&json!("%ip.x%"), &context).unwrap_err().code(),
        "unknown_macro"
    );
}

/// One expansion writes at most `MAX_EXPANSION_BYTES`; a JSON value nests at most
/// `MAX_VALUE_DEPTH` levels. Each limit is tested at the limit and one past it.
#[test]
fn bounds() {
    let context = MacroContext {
        cluster_owner: "u".to_string(),
        ..MacroContext::default()
    };
    let at_limit = format!("{}%cluster.owner%", "x".repeat(MAX_EXPANSION_BYTES - 1));
    assert_eq!(
        expand_str(&at_limit, &context).map(|s| s.len()),
        Ok(MAX_EXPANSION_BYTES)
    );
    let past_limit = format!("{}%cluster.owner%", "x".repeat(MAX_EXPANSION_BYTES));
    assert_eq!(
        expand_str(&past_limit, &context).unwrap_err().code(),
        "too_large"
    );

    // The strings of one JSON value share the limit.
    let half = "x".repeat(MAX_EXPANSION_BYTES / 2);
    assert!(expand_value(&json!([half, half]), &context).is_ok());
    assert_eq!(
        expand_value(&json!([half, half, "x"]), &context)
            .unwrap_err()
            .code(),
        "too_large"
    );

    // A large cluster times a long map format: refused early, not built.
    let big = MacroContext {
        nodes: (0..2_000)
            .map(|i| {
                node(
                    &format!("n{i:05}"),
                    i,
                    &format!("host-{i:05}.example.com"),
                    &[],
                    &["s"],
                )
            })
            .collect(),
        ..MacroContext::default()
    };
    let format = "$ ".repeat(500);
    let input = format!("%join(map(host.service.s,'{format}'),',')%");
    assert_eq!(
        expand_str(&input, &big)
            .map(|s| s.len())
            .unwrap_err()
            .code(),
        "too_large"
    );
    assert_eq!(expand_str("%num.service.s%", &big).as_deref(), Ok("2000"));

    let nested = |levels: usize, leaf: &str| {
        let mut value = json!(leaf);
        for _ in 0..levels {
            value = json!([value]);
        }
        value
    };
    assert_eq!(
        expand_value(&nested(MAX_VALUE_DEPTH, "%cluster.owner%"), &context),
        Ok(nested(MAX_VALUE_DEPTH, "u"))
    );
    assert_eq!(
        expand_value(&nested(MAX_VALUE_DEPTH + 1, "%cluster.owner%"), &context)
            .unwrap_err()
            .code(),
        "too_deep"
    );
}

/// Random strings of macro characters never panic, stay within the output bound, and
/// `validate` agrees with `expand_str`: what expands validates, and what validates fails to
/// expand only for cluster reasons. Seeded, so a failure reproduces.
#[test]
fn fuzz_never_panics() {
    const ALPHABET: &[u8] = b"%%%()[]',..$\"abcjoinmaphostipselfserviceowner_-0123456789 ";
    const WORDS: &[&str] = &[
        "join(",
        "map(",
        "host.service.",
        "ip.",
        "service.",
        "self",
        "num.service.",
        "svc1",
        "instance.self.service.",
        "cluster.owner",
        "access_v4.",
        "[0]",
        "[2]",
        ",'$:1')",
        "'-')",
        "ü",
    ];
    let context = coopr_cluster("foo");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut expanded = 0;
    for _ in 0..30_000 {
        let len = (next() % 40) as usize;
        let mut input = String::new();
        for _ in 0..len {
            let r = next();
            if r % 3 == 0 {
                input.push_str(WORDS[(r / 3) as usize % WORDS.len()]);
            } else {
                input.push(ALPHABET[(r / 3) as usize % ALPHABET.len()] as char);
            }
        }
        let validated = validate(&input);
        match expand_str(&input, &context) {
            Ok(output) => {
                expanded += 1;
                assert!(output.len() <= MAX_EXPANSION_BYTES);
                assert_eq!(
                    validated,
                    Ok(()),
                    "{input:?} expanded but does not validate"
                );
            }
            Err(e) => {
                if validated.is_ok() {
                    assert!(
                        !matches!(e.code(), "syntax" | "unknown_macro"),
                        "{input:?} validates but expands to {e}"
                    );
                }
            }
        }
    }
    // The loop reached both outcomes.
    assert!(expanded > 1_000, "only {expanded} inputs expanded");
}
