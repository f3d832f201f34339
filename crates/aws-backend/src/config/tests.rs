//! Loading and checking configurations: what is taken, and how a refusal names the fix.

use super::*;

/// A valid configuration whose `ssh_ingress_cidrs` line is `cidrs_line` (empty: the default).
fn config_with(cidrs_line: &str) -> Result<AwsBootConfig, ConfigError> {
    AwsBootConfig::from_toml(&format!(
        r#"
        regions = ["us-east-1"]
        instance_families = ["m6i"]
        owner = "unit"
        ami = {{ us-east-1 = "ami-12345678" }}
        ledger_path = "/nonexistent/ledger"
        almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
        guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
        {cidrs_line}
        "#
    ))
}

fn refused(cidrs_line: &str) -> String {
    match config_with(cidrs_line) {
        Ok(cfg) => panic!("{cidrs_line} was accepted as {:?}", cfg.ssh_ingress_cidrs),
        Err(err) => err.to_string(),
    }
}

#[test]
fn ipv4_and_ipv6_cidrs_are_accepted_and_printed_canonically() {
    let cfg = config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "198.51.100.7/32", "2001:DB8:0:0::/32", "::/0"]"#)
        .expect("valid CIDRs");
    let printed: Vec<String> = cfg.ssh_ingress_cidrs.iter().map(ToString::to_string).collect();
    assert_eq!(printed, ["203.0.113.0/24", "198.51.100.7/32", "2001:db8::/32", "::/0"]);
    let families: Vec<bool> = cfg.ssh_ingress_cidrs.iter().map(IngressCidr::is_ipv6).collect();
    assert_eq!(families, [false, false, true, true]);
    assert_eq!(cfg.ssh_ingress_cidrs[0].prefix_len(), 24);
    assert_eq!(cfg.ssh_ingress_cidrs[3], IngressCidr::IPV6_ANYWHERE);
}

#[test]
fn the_default_is_still_the_whole_ipv4_internet() {
    let cfg = config_with("").expect("valid");
    assert_eq!(cfg.ssh_ingress_cidrs, [IngressCidr::IPV4_ANYWHERE]);
    assert_eq!(cfg.ssh_ingress_cidrs[0].to_string(), "0.0.0.0/0");
}

#[test]
fn prefixes_longer_than_the_family_allows_are_refused_naming_the_value() {
    let err = refused(r#"ssh_ingress_cidrs = ["10.0.0.0/33"]"#);
    assert!(err.contains("ssh_ingress_cidrs") && err.contains("\"10.0.0.0/33\"") && err.contains("0 to 32"), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::/129"]"#);
    assert!(err.contains("\"2001:db8::/129\"") && err.contains("0 to 128"), "{err}");
    // An IPv6 prefix is fine up to 128 but an IPv4 one is not.
    assert!(config_with(r#"ssh_ingress_cidrs = ["2001:db8::1/128"]"#).is_ok());
    for bad in ["10.0.0.0/", "10.0.0.0/+8", "10.0.0.0/-1", "10.0.0.0/0008", "10.0.0.0/8/8"] {
        let err = refused(&format!(r#"ssh_ingress_cidrs = ["{bad}"]"#));
        assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
    }
}

#[test]
fn garbage_and_bare_addresses_are_refused_with_the_fix() {
    let err = refused(r#"ssh_ingress_cidrs = ["anywhere"]"#);
    assert!(err.contains("\"anywhere\"") && err.contains("203.0.113.0/24"), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["10.0.0.256/8"]"#);
    assert!(err.contains("neither an IPv4 nor an IPv6 address"), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["fe80::1%eth0/64"]"#);
    assert!(err.contains("fe80::1%eth0"), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["198.51.100.7"]"#);
    assert!(err.contains("\"198.51.100.7/32\""), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::7"]"#);
    assert!(err.contains("\"2001:db8::7/128\""), "{err}");
}

#[test]
fn host_bits_past_the_prefix_are_refused_with_both_readings() {
    let err = refused(r#"ssh_ingress_cidrs = ["203.0.113.7/24"]"#);
    assert!(err.contains("\"203.0.113.0/24\"") && err.contains("\"203.0.113.7/32\""), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::1/32"]"#);
    assert!(err.contains("\"2001:db8::/32\"") && err.contains("\"2001:db8::1/128\""), "{err}");
}

#[test]
fn empty_and_repeated_lists_are_refused() {
    let err = refused("ssh_ingress_cidrs = []");
    assert!(err.contains("ssh_ingress_cidrs") && err.contains("is empty"), "{err}");
    let err = refused(r#"ssh_ingress_cidrs = ["2001:db8::/32", "2001:0db8::/32"]"#);
    assert!(err.contains("2001:db8::/32 twice"), "{err}");
}

#[test]
fn opening_ssh_to_the_whole_internet_is_warned_about_per_family() {
    let warnings = config_with("").expect("valid").warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("0.0.0.0/0") && warnings[0].contains("whole IPv4 Internet"), "{warnings:?}");
    assert!(warnings[0].contains("ssh_ingress_cidrs = ["), "the warning says how to narrow it: {warnings:?}");

    let warnings = config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "::/0"]"#).expect("valid").warnings();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("::/0") && warnings[0].contains("whole IPv6 Internet"), "{warnings:?}");

    let narrow = config_with(r#"ssh_ingress_cidrs = ["203.0.113.0/24", "2001:db8::/32", "0.0.0.0/1"]"#);
    assert_eq!(narrow.expect("valid").warnings(), Vec::<String>::new());
}

/// A valid configuration whose `ami` part is `ami` (`regions` names us-east-1 and
/// eu-west-1) followed by the lines `extra` (tables last, as TOML wants).
fn config_ami(ami: &str, extra: &str) -> Result<AwsBootConfig, ConfigError> {
    AwsBootConfig::from_toml(&format!(
        r#"
        regions = ["us-east-1", "eu-west-1"]
        instance_families = ["m6i", "m7g"]
        owner = "unit"
        ledger_path = "/nonexistent/ledger"
        almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
        guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
        {ami}
        {extra}
        "#
    ))
}

const X86_ALIAS: &str = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64";

#[test]
fn amis_are_ids_or_aliases_for_one_or_each_architecture() {
    let cfg = config_ami(
        &format!(
            r#"
            [ami]
            eu-west-1 = "ami-0123456789abcdef0"
            us-east-1 = {{ x86_64 = "resolve:ssm:{X86_ALIAS}", arm64 = "ami-0fedcba9876543210" }}
            "#
        ),
        "",
    )
    .expect("valid");
    // The old form still means x86_64.
    assert_eq!(
        cfg.image_source("eu-west-1", Architecture::X86_64),
        Some(ImageSource::Id("ami-0123456789abcdef0".into()))
    );
    assert_eq!(cfg.image_source("eu-west-1", Architecture::Arm64), None);
    assert_eq!(cfg.architectures("eu-west-1"), [Architecture::X86_64].into());
    assert_eq!(cfg.image_source("us-east-1", Architecture::X86_64), Some(ImageSource::Parameter(X86_ALIAS.into())));
    assert_eq!(cfg.architectures("us-east-1"), Architecture::ALL.into());
    assert_eq!(cfg.ami_refresh_s, 3_600, "the default refresh");
    assert_eq!(
        ImageSource::Parameter(X86_ALIAS.into()).to_string(),
        format!("resolve:ssm:{X86_ALIAS}"),
        "printed as written"
    );
    // A dotted key works as well as an inline table.
    let dotted = config_ami(
        &format!(
            r#"
            ami.us-east-1.arm64 = "resolve:ssm:/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64"
            ami.eu-west-1 = "resolve:ssm:{X86_ALIAS}"
            "#
        ),
        "ami_refresh_s = 600",
    )
    .expect("valid");
    assert_eq!(dotted.architectures("us-east-1"), [Architecture::Arm64].into());
    assert_eq!(dotted.ami_refresh_ms(), 600_000);
}

#[test]
fn bad_amis_are_refused_naming_the_key_and_the_fix() {
    let refused = |ami: &str, extra: &str| match config_ami(ami, extra) {
        Ok(_) => panic!("{ami} {extra} was accepted"),
        Err(err) => err.to_string(),
    };
    let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "al2023" }"#, "");
    assert!(err.contains("ami.eu-west-1") && err.contains("\"al2023\"") && err.contains("resolve:ssm:"), "{err}");
    let err = refused(
        r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = { aarch64 = "ami-0123456789abcdef0" } }"#,
        "",
    );
    assert!(err.contains("ami.eu-west-1.aarch64") && err.contains("x86_64 or arm64"), "{err}");
    let err = refused(
        r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = { arm64 = "resolve:ssm:/aws/service/a b" } }"#,
        "",
    );
    assert!(err.contains("ami.eu-west-1.arm64") && err.contains("not an SSM alias"), "{err}");
    let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = {} }"#, "");
    assert!(err.contains("ami.eu-west-1") && err.contains("empty table"), "{err}");
    let err = refused(r#"ami = { us-east-1 = "ami-0123456789abcdef0" }"#, "");
    assert!(err.contains("no AMI for region eu-west-1") && err.contains("resolve:ssm:"), "{err}");
    let both = r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "ami-0123456789abcdef0" }"#;
    let err = refused(both, "ami_refresh_s = 5");
    assert!(err.contains("ami_refresh_s") && err.contains("3600"), "{err}");
}

#[test]
fn prices_are_global_or_per_region_and_the_region_wins() {
    let both = r#"ami = { us-east-1 = "ami-0123456789abcdef0", eu-west-1 = "ami-0123456789abcdef0" }"#;
    let cfg = config_ami(
        both,
        r#"
        [prices]
        "m7g.large" = 0.0816
        "m6i.large" = 0.096
        [prices.eu-west-1]
        "m7g.large" = 0.0892
        "#,
    )
    .expect("valid");
    assert_eq!(cfg.prices_for("us-east-1")["m7g.large"], 0.0816);
    assert_eq!(cfg.prices_for("eu-west-1")["m7g.large"], 0.0892);
    assert_eq!(cfg.prices_for("eu-west-1")["m6i.large"], 0.096);
    assert!(config_ami(both, "").expect("valid").prices_for("us-east-1").is_empty());

    let refused = |extra: &str| match config_ami(both, extra) {
        Ok(_) => panic!("{extra} was accepted"),
        Err(err) => err.to_string(),
    };
    let err = refused("[prices]\n\"m7g.large\" = -1.0");
    assert!(err.contains("prices.\"m7g.large\"") && err.contains("above 0"), "{err}");
    let err = refused("[prices.ap-south-1]\n\"m7g.large\" = 0.05");
    assert!(err.contains("prices.ap-south-1") && err.contains("configured regions"), "{err}");
    let err = refused("[prices]\nm7g = 0.05");
    assert!(err.contains("\"m7g\"") && err.contains("instance type"), "{err}");
}

/// A valid configuration but for its ledger: `path_line` (a `ledger_path = ...` line, or
/// nothing) and the `[ledger]` table's lines (nothing: no table).
fn config_ledger(path_line: &str, ledger: &str) -> Result<AwsBootConfig, ConfigError> {
    let table = if ledger.is_empty() { String::new() } else { format!("[ledger]\n{ledger}") };
    AwsBootConfig::from_toml(&format!(
        r#"
        regions = ["eu-west-1"]
        instance_families = ["m6i"]
        owner = "unit"
        ami = {{ eu-west-1 = "ami-12345678" }}
        endpoint_url = "http://127.0.0.1:5098"
        {path_line}
        almanac = {{ epoch_unix_ms = 0, tick_ms = 1000 }}
        guest = {{ content_store_url = "http://127.0.0.1:9/blobs/{{hash}}" }}
        {table}
        "#
    ))
}

const DYNAMO: &str = r#"
    store = "dynamodb"
    table = "compute-bridge-ledger"
    group = "bridge-eu-1"
    key_seed_path = "/etc/compute-bridge/group.keyseed"
"#;

fn ledger_refused(path_line: &str, ledger: &str) -> String {
    match config_ledger(path_line, ledger) {
        Ok(cfg) => panic!("{path_line} [ledger] {ledger} was accepted as {:?}", cfg.ledger),
        Err(err) => err.to_string(),
    }
}

#[test]
fn the_file_store_is_the_default_and_behaves_as_before() {
    let cfg = config_ledger(r#"ledger_path = "/var/lib/cb/aws.ledger""#, "").expect("valid");
    assert_eq!(cfg.ledger_store(), LedgerStore::File { path: "/var/lib/cb/aws.ledger".into() });
    let explicit = config_ledger(r#"ledger_path = "/var/lib/cb/aws.ledger""#, r#"store = "file""#);
    assert_eq!(explicit.expect("valid").ledger_store(), cfg.ledger_store());

    let err = ledger_refused("", "");
    assert!(err.contains("`ledger_path`") && err.contains("is missing") && err.contains("dynamodb"), "{err}");
    // A DynamoDB key with the file store would be silently ignored: refused, naming it.
    let err = ledger_refused(r#"ledger_path = "/l""#, r#"table = "t-1""#);
    assert!(err.contains("`ledger.table`") && err.contains("store = \"dynamodb\""), "{err}");
    let err = ledger_refused(r#"ledger_path = "/l""#, r#"key_seed_path = "/s""#);
    assert!(err.contains("`ledger.key_seed_path`") && err.contains("<ledger_path>.keyseed"), "{err}");
    let err = ledger_refused(r#"ledger_path = "/l""#, r#"lease_s = 60"#);
    assert!(err.contains("`ledger.lease_s`"), "{err}");
}

#[test]
fn a_dynamodb_ledger_names_its_table_group_lease_and_shared_key_seed() {
    let cfg = config_ledger("", DYNAMO).expect("valid");
    let LedgerStore::DynamoDb(ddb) = cfg.ledger_store() else { panic!("{:?}", cfg.ledger_store()) };
    assert_eq!(ddb.table, "compute-bridge-ledger");
    assert_eq!(ddb.group, "bridge-eu-1");
    assert_eq!(ddb.lease_ms, 30_000, "the default lease");
    assert_eq!(ddb.key_seed_path, PathBuf::from("/etc/compute-bridge/group.keyseed"));
    assert_eq!(ddb.region.as_str(), "eu-west-1", "the first of `regions` by default");
    assert_eq!(ddb.endpoint_url.as_deref(), Some("http://127.0.0.1:5098"), "endpoint_url by default");

    let own = format!("{DYNAMO}\nlease_s = 6\nregion = \"us-east-2\"\nendpoint_url = \"http://127.0.0.1:8000\"");
    let LedgerStore::DynamoDb(ddb) = config_ledger("", &own).expect("valid").ledger_store() else { panic!() };
    assert_eq!((ddb.lease_ms, ddb.region.as_str()), (6_000, "us-east-2"));
    assert_eq!(ddb.endpoint_url.as_deref(), Some("http://127.0.0.1:8000"));
}

#[test]
fn bad_dynamodb_ledger_keys_are_refused_naming_the_key_and_the_fix() {
    let without =
        |key: &str| DYNAMO.lines().filter(|l| !l.trim_start().starts_with(key)).collect::<Vec<_>>().join("\n");
    let err = ledger_refused("", &without("key_seed_path"));
    assert!(
        err.contains("`ledger.key_seed_path`")
            && err.contains("same per-grant SSH keys")
            && err.contains("every bridge"),
        "{err}"
    );
    let err = ledger_refused("", &without("table"));
    assert!(err.contains("`ledger.table`") && err.contains("create-table"), "{err}");
    let err = ledger_refused("", &without("group"));
    assert!(err.contains("`ledger.group`") && err.contains("is missing"), "{err}");
    let err = ledger_refused(r#"ledger_path = "/l""#, DYNAMO);
    assert!(err.contains("`ledger_path`") && err.contains("remove it"), "{err}");
    for lease_s in [0, 5, 601] {
        let err = ledger_refused("", &format!("{DYNAMO}\nlease_s = {lease_s}"));
        assert!(err.contains("`ledger.lease_s`") && err.contains("6 to 600") && err.contains("use 30"), "{err}");
    }
    assert!(config_ledger("", &format!("{DYNAMO}\nlease_s = 600")).is_ok());
    let err = ledger_refused("", &DYNAMO.replace("compute-bridge-ledger", "my table"));
    assert!(err.contains("`ledger.table`") && err.contains("\"my table\""), "{err}");
    let err = ledger_refused("", &DYNAMO.replace("bridge-eu-1", "bridge eu"));
    assert!(err.contains("`ledger.group`") && err.contains("without spaces"), "{err}");
    let err = ledger_refused("", &DYNAMO.replace("/etc/compute-bridge/group.keyseed", "group.keyseed"));
    assert!(err.contains("`ledger.key_seed_path`") && err.contains("absolute"), "{err}");
    let err = ledger_refused("", &format!("{DYNAMO}\nendpoint_url = \"localhost:8000\""));
    assert!(err.contains("`ledger.endpoint_url`"), "{err}");
    let err = ledger_refused("", r#"store = "sqlite""#);
    assert!(err.contains("sqlite") && err.contains("dynamodb"), "{err}");
    let err = ledger_refused("", &format!("{DYNAMO}\nlease_ms = 6000"));
    assert!(err.contains("lease_ms"), "{err}");
}

#[test]
fn every_problem_is_reported_at_once_each_naming_its_key_and_value() {
    let err = AwsBootConfig::from_toml(
        r#"
        regions = ["us-east-1", "us-east-1"]
        instance_families = ["M6I"]
        owner = "has space"
        ami = { us-east-1 = "al2023" }
        ami_refresh_s = 5
        poll_interval_ms = 1
        network = { us-west-2 = { subnet_ids = ["sn-1"] } }
        ledger_path = "/nonexistent/ledger"
        almanac = { epoch_unix_ms = 0, tick_ms = 1000 }
        guest = { content_store_url = "http://127.0.0.1:9/blobs/{hash}" }
        "#,
    )
    .expect_err("refused");
    let fields: Vec<&str> = err.problems().iter().map(|p| p.field.as_str()).collect();
    for field in [
        "regions",
        "ami.us-east-1",
        "ami_refresh_s",
        "network.us-west-2",
        "network.us-west-2.subnet_ids",
        "instance_families",
        "owner",
        "poll_interval_ms",
    ] {
        assert!(fields.contains(&field), "{field} is not among {fields:?}");
    }
    let shown = err.to_string();
    assert!(shown.starts_with(&format!("{} problems in the config:", fields.len())), "{shown}");
    for value in ["\"al2023\"", "\"M6I\"", "\"has space\"", "\"sn-1\"", "5 s", "1 is outside"] {
        assert!(shown.contains(value), "the value {value} is quoted: {shown}");
    }
    assert_eq!(shown.lines().count(), fields.len() + 1, "one line per problem: {shown}");
}

#[test]
fn a_single_problem_reads_as_before() {
    let err = refused(r#"ssh_ingress_cidrs = []"#);
    assert!(err.starts_with("config field `ssh_ingress_cidrs`: is empty"), "{err}");
}

#[test]
fn drain_s_defaults_to_30_and_a_drain_over_an_hour_is_refused_naming_the_fix() {
    assert_eq!(config_with("").expect("valid").drain_s, 30);
    assert_eq!(config_with("drain_s = 0").expect("no drain is allowed").drain_ms(), 0);
    assert_eq!(config_with("drain_s = 3600").expect("an hour is the most").drain_ms(), 3_600_000);
    let err = refused("drain_s = 3601");
    assert!(err.contains("`drain_s`") && err.contains("3601 s") && err.contains("use 30"), "{err}");
}
