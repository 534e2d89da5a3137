//! The `sql` source against real databases: a PostgreSQL cluster made with
//! `initdb` in a temp dir, a MariaDB server made with `mariadb-install-db`,
//! and SQLite files — each on free loopback ports, torn down after.

mod common;

use std::process::Command;

use common::mariadb::MariaDb;
use common::postgres::Postgres;
use common::process::run_ok as run;
use common::{
    Vitals, WAIT, assert_samples, check_config, metric, promtool_check_metrics, require,
    sample_value, wait_absent, wait_for, wait_value,
};

const ORDERS_SQL: &str = "
    CREATE TABLE orders (id serial, status text, merchant text, amount numeric(12,2), items int4, flagged bool);
    INSERT INTO orders (status, merchant, amount, items, flagged) VALUES
        ('ok', 'm-1', 125000.50, 2, true), ('ok', 'm-2', 100.25, 1, false), ('failed', 'm-1', 42, 3, false);
";

fn orders_config(dsn_key: &str, dsn: &str) -> String {
    format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "shop"
{dsn_key} = "{dsn}"
interval = "200ms"

[[sources.queries]]
name = "by_status"
sql = "SELECT status, count(*) AS orders, sum(amount) AS amount, sum(items)::int8 AS items, bool_or(flagged) AS flagged FROM orders GROUP BY status"
labels = ["status"]
[[sources.queries.metrics]]
name = "shop_orders"
column = "orders"
help = "Orders by status."
[[sources.queries.metrics]]
name = "shop_order_amount_rupees_total"
column = "amount"
kind = "counter"
[[sources.queries.metrics]]
name = "shop_order_items"
column = "items"
[[sources.queries.metrics]]
name = "shop_orders_flagged"
column = "flagged"

[[sources.queries]]
name = "merchants"
sql = "SELECT merchant, 1.5::float8 AS one_and_half, 'not a number' AS text_value FROM orders WHERE status = 'ok'"
interval = "300ms"
labels = ["merchant"]
[[sources.queries.metrics]]
name = "shop_merchant_seen"
column = "one_and_half"
[[sources.queries.metrics]]
name = "shop_merchant_text"
column = "text_value"
"#
    )
}

#[test]
fn postgres_rows_become_labelled_gauges_and_counters_and_zero_rows_remove_series() {
    let pg = Postgres::start();
    pg.psql(ORDERS_SQL);
    let dir = tempfile::tempdir().unwrap();
    // The DSN comes from a file here (and is never echoed).
    let dsn_file = dir.path().join("dsn");
    std::fs::write(&dsn_file, format!("{}\n", pg.dsn())).unwrap();
    let v = Vitals::start(&orders_config("dsn_file", &dsn_file.display().to_string()));

    wait_value(&v, "shop_orders", &[r#"status="ok""#], 2.0);
    let m = v.metrics();
    assert_samples(
        &m,
        &[
            ("shop_orders", &[r#"status="failed""#], Some(1.0)),
            (
                "shop_order_amount_rupees_total",
                &[r#"status="ok""#],
                Some(125100.75),
            ),
            ("shop_order_items", &[r#"status="failed""#], Some(3.0)),
            ("shop_orders_flagged", &[r#"status="ok""#], Some(1.0)),
            ("shop_orders_flagged", &[r#"status="failed""#], Some(0.0)),
        ],
    );
    assert!(
        m.contains("# TYPE shop_order_amount_rupees_total counter"),
        "{m}"
    );
    assert!(m.contains("# HELP shop_orders Orders by status."), "{m}");
    wait_value(&v, "shop_merchant_seen", &[r#"merchant="m-2""#], 1.5);
    // A text value that is not a number is dropped and counted, the rest stays.
    let m = v.metrics();
    assert!(sample_value(&m, "shop_merchant_text", &[]).is_none());
    assert!(
        sample_value(
            &m,
            "vitals_samples_dropped_total",
            &[r#"source="shop""#, r#"reason="not_a_number""#]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    assert_samples(
        &m,
        &[
            (
                "vitals_sql_query_up",
                &[r#"source="shop""#, r#"query="by_status""#],
                Some(1.0),
            ),
            (
                "vitals_sql_query_rows",
                &[r#"query="by_status""#],
                Some(2.0),
            ),
        ],
    );
    assert!(
        sample_value(
            &m,
            "vitals_source_last_success_timestamp_seconds",
            &[r#"source="shop""#]
        )
        .unwrap()
            > 0.0
    );
    assert!(!m.contains("postgres://"), "the DSN leaked into /metrics");
    let (ok, findings) = promtool_check_metrics(&m);
    assert!(ok, "promtool: {findings}");

    // A row that goes away takes its series with it.
    pg.psql("DELETE FROM orders WHERE status = 'failed'");
    wait_absent(&v, "shop_orders", &[r#"status="failed""#]);
    assert_eq!(metric(&v, "shop_orders", &[r#"status="ok""#]), Some(2.0));

    // Zero rows: every series of the query goes, the query stays up.
    pg.psql("DELETE FROM orders");
    wait_absent(&v, "shop_orders", &[]);
    wait_absent(&v, "shop_merchant_seen", &[]);
    assert_samples(
        &v.metrics(),
        &[
            ("vitals_sql_query_up", &[r#"query="by_status""#], Some(1.0)),
            (
                "vitals_sql_query_rows",
                &[r#"query="by_status""#],
                Some(0.0),
            ),
        ],
    );
}

#[test]
fn a_failing_or_slow_query_marks_only_itself_down() {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE t (k text, v int8); INSERT INTO t VALUES ('a', 7);");
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "db"
dsn = "{dsn}"
interval = "200ms"
timeout = "5s"

[[sources.queries]]
name = "good"
sql = "SELECT k, v FROM t"
labels = ["k"]
[[sources.queries.metrics]]
name = "db_good_value"
column = "v"

[[sources.queries]]
name = "broken"
sql = "SELECT v FROM no_such_table"
[[sources.queries.metrics]]
name = "db_broken_value"
column = "v"

[[sources.queries]]
name = "missing_column"
sql = "SELECT v FROM t"
[[sources.queries.metrics]]
name = "db_other_value"
column = "nope"

[[sources.queries]]
name = "slow"
sql = "SELECT 1::int8 AS v FROM pg_sleep(3)"
timeout = "300ms"
[[sources.queries.metrics]]
name = "db_slow_value"
column = "v"
"#,
        dsn = pg.dsn()
    ));
    wait_value(&v, "db_good_value", &[r#"k="a""#], 7.0);
    for (query, reason) in [
        ("broken", "query"),
        ("missing_column", "missing_column"),
        ("slow", "timeout"),
    ] {
        wait_for(WAIT, &format!("{query} errors by {reason}"), || {
            let m = v.metrics();
            let errors = sample_value(
                &m,
                "vitals_sql_query_errors_total",
                &[
                    &format!("query=\"{query}\""),
                    &format!("reason=\"{reason}\""),
                ],
            )?;
            let src = sample_value(
                &m,
                "vitals_source_errors_total",
                &[r#"source="db""#, &format!("reason=\"{reason}\"")],
            )?;
            (errors >= 1.0 && src >= 1.0).then_some(())
        });
        assert_eq!(
            metric(&v, "vitals_sql_query_up", &[&format!("query=\"{query}\"")]),
            Some(0.0)
        );
    }
    // The good query keeps running, and the database counts as up.
    pg.psql("UPDATE t SET v = 8");
    wait_value(&v, "db_good_value", &[r#"k="a""#], 8.0);
    assert_samples(
        &v.metrics(),
        &[
            ("vitals_sql_query_up", &[r#"query="good""#], Some(1.0)),
            ("vitals_source_up", &[r#"source="db""#], Some(1.0)),
            ("db_slow_value", &[], None),
            ("db_broken_value", &[], None),
        ],
    );
}

#[test]
fn postgres_stopped_marks_the_source_down_until_it_is_back() {
    let pg = Postgres::start();
    pg.psql("CREATE TABLE t (v int8); INSERT INTO t VALUES (5);");
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "db"
dsn = "{dsn}"
interval = "200ms"
timeout = "2s"
connect_timeout = "1s"

[[sources.queries]]
name = "value"
sql = "SELECT v FROM t"
[[sources.queries.metrics]]
name = "db_value"
column = "v"
"#,
        dsn = pg.dsn()
    ));
    wait_value(&v, "db_value", &[], 5.0);
    wait_value(&v, "vitals_source_up", &[r#"source="db""#], 1.0);

    pg.stop();
    wait_value(&v, "vitals_source_up", &[r#"source="db""#], 0.0);
    wait_value(&v, "vitals_sql_query_up", &[r#"query="value""#], 0.0);
    wait_absent(&v, "db_value", &[]);
    assert!(
        metric(
            &v,
            "vitals_source_errors_total",
            &[r#"source="db""#, r#"reason="connect""#]
        )
        .unwrap_or(0.0)
            >= 1.0
    );

    pg.pg_ctl_start();
    wait_value(&v, "db_value", &[], 5.0);
    wait_value(&v, "vitals_source_up", &[r#"source="db""#], 1.0);
    wait_value(&v, "vitals_sql_query_up", &[r#"query="value""#], 1.0);
}

#[test]
fn sqlite_file_values_and_labels() {
    let sqlite3 = require("sqlite3");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("readings.db");
    let exec = |sql: &str| run(Command::new(&sqlite3).arg(&db).arg(sql));
    exec(
        "CREATE TABLE readings (sensor TEXT, celsius REAL, count INTEGER, state TEXT);
         INSERT INTO readings VALUES ('boiler', 71.5, 10, '3.25'), ('tank', 20.0, 4, NULL);",
    );
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "lite"
dsn = "sqlite://{}?mode=ro"
interval = "200ms"

[[sources.queries]]
name = "readings"
sql = "SELECT sensor, celsius, count, state FROM readings"
labels = ["sensor"]
[[sources.queries.metrics]]
name = "plant_temperature_celsius"
column = "celsius"
[[sources.queries.metrics]]
name = "plant_readings_total"
column = "count"
kind = "counter"
[[sources.queries.metrics]]
name = "plant_state"
column = "state"
"#,
        db.display()
    ));
    wait_value(
        &v,
        "plant_temperature_celsius",
        &[r#"sensor="boiler""#],
        71.5,
    );
    assert_samples(
        &v.metrics(),
        &[
            (
                "plant_temperature_celsius",
                &[r#"sensor="tank""#],
                Some(20.0),
            ),
            ("plant_readings_total", &[r#"sensor="tank""#], Some(4.0)),
            // Numeric text is read as a number; NULL is no sample.
            ("plant_state", &[r#"sensor="boiler""#], Some(3.25)),
            ("plant_state", &[r#"sensor="tank""#], None),
        ],
    );
    exec("DELETE FROM readings WHERE sensor = 'tank'");
    wait_absent(&v, "plant_temperature_celsius", &[r#"sensor="tank""#]);
}

#[test]
fn mariadb_values_labels_and_decimals() {
    let db = MariaDb::start();
    db.sql(
        "CREATE DATABASE shop; USE shop;
         CREATE TABLE payments (method VARCHAR(20), amount DECIMAL(12,2), n BIGINT UNSIGNED, ok TINYINT(1));
         INSERT INTO payments VALUES ('upi', 100000.50, 3, 1), ('card', 20.25, 1, 0);",
    );
    let v = Vitals::start(&format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "maria"
dsn = "mariadb://root@127.0.0.1:{}/shop"
interval = "200ms"

[[sources.queries]]
name = "payments"
sql = "SELECT method, SUM(amount) AS amount, SUM(n) AS n, MAX(ok) AS ok, COUNT(*) AS c FROM payments GROUP BY method"
labels = ["method"]
[[sources.queries.metrics]]
name = "shop_payment_amount_rupees_total"
column = "amount"
kind = "counter"
[[sources.queries.metrics]]
name = "shop_payments"
column = "n"
[[sources.queries.metrics]]
name = "shop_payment_ok"
column = "ok"
[[sources.queries.metrics]]
name = "shop_payment_rows"
column = "c"
"#,
        db.port
    ));
    wait_value(
        &v,
        "shop_payment_amount_rupees_total",
        &[r#"method="upi""#],
        100000.5,
    );
    assert_samples(
        &v.metrics(),
        &[
            (
                "shop_payment_amount_rupees_total",
                &[r#"method="card""#],
                Some(20.25),
            ),
            ("shop_payments", &[r#"method="upi""#], Some(3.0)),
            ("shop_payment_ok", &[r#"method="card""#], Some(0.0)),
            ("shop_payment_rows", &[r#"method="card""#], Some(1.0)),
        ],
    );
    db.sql("DELETE FROM shop.payments");
    wait_absent(&v, "shop_payments", &[]);
    assert_eq!(
        metric(&v, "vitals_sql_query_up", &[r#"query="payments""#]),
        Some(1.0)
    );
}

fn check(config: &str) -> (bool, String) {
    let checked = check_config("c.toml", config);
    (checked.ok(), checked.output())
}

#[test]
fn check_names_the_key_of_a_bad_sql_source_and_never_echoes_the_dsn() {
    let base = r#"
[[sources]]
type = "sql"
name = "db"
dsn = "oracle://scott:tiger-secret@db/orcl"
[[sources.queries]]
name = "q"
sql = "SELECT 1 AS v"
[[sources.queries.metrics]]
name = "v"
column = "v"
"#;
    let (ok, out) = check(base);
    assert!(!ok);
    assert!(out.contains("sources[0].dsn"), "{out}");
    assert!(out.contains("oracle"), "{out}");
    assert!(!out.contains("tiger-secret"), "{out}");

    let (ok, out) = check(
        &base
            .replace("oracle://scott:tiger-secret@db/orcl", "sqlite::memory:")
            .replace("column = \"v\"", "column = \"v\"\nkind = \"counter\""),
    );
    assert!(!ok);
    assert!(
        out.contains("sources[0].queries[0].metrics[0].name"),
        "{out}"
    );

    let (ok, out) = check(
        &base
            .replace("sql = \"SELECT 1 AS v\"", "")
            .replace("oracle://scott:tiger-secret@db/orcl", "sqlite::memory:"),
    );
    assert!(!ok);
    assert!(out.contains("sql"), "{out}");

    let (ok, out) = check(&base.replace("oracle://scott:tiger-secret@db/orcl", "sqlite::memory:"));
    assert!(ok, "{out}");
}

#[test]
fn dsn_from_the_environment_and_a_missing_one_reported_as_down() {
    let sqlite3 = require("sqlite3");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("k.db");
    run(Command::new(&sqlite3)
        .arg(&db)
        .arg("CREATE TABLE k (v INTEGER); INSERT INTO k VALUES (9);"));
    let config = r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "envdb"
dsn_env = "SQLTEST_DSN"
interval = "200ms"

[[sources.queries]]
name = "k"
sql = "SELECT v FROM k"
[[sources.queries.metrics]]
name = "envdb_value"
column = "v"
"#;
    let dsn = format!("sqlite://{}", db.display());
    let v = Vitals::start_env(config, &[("SQLTEST_DSN", &dsn)]);
    wait_value(&v, "envdb_value", &[], 9.0);
    drop(v);

    let v = Vitals::start_env(&config.replace("SQLTEST_DSN", "SQLTEST_DSN_UNSET"), &[]);
    wait_for(WAIT, "the missing DSN to be reported", || {
        let m = v.metrics();
        let errors = sample_value(
            &m,
            "vitals_source_errors_total",
            &[r#"source="envdb""#, r#"reason="dsn""#],
        )?;
        let up = sample_value(&m, "vitals_source_up", &[r#"source="envdb""#])?;
        (errors >= 1.0 && up == 0.0).then_some(())
    });
    assert_eq!(
        metric(&v, "vitals_sql_query_up", &[r#"query="k""#]),
        Some(0.0)
    );
}

#[test]
fn reload_removes_a_sql_source_with_its_series_and_self_metrics_and_can_add_it_back() {
    let sqlite3 = require("sqlite3");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    run(Command::new(&sqlite3)
        .arg(&db)
        .arg("CREATE TABLE r (k TEXT, v INTEGER); INSERT INTO r VALUES ('a', 1), ('b', 2);"));
    let with_source = format!(
        r#"
[system]
enabled = false

[[sources]]
type = "sql"
name = "reloaded"
dsn = "sqlite://{}"
interval = "200ms"

[[sources.queries]]
name = "r"
sql = "SELECT k, v FROM r"
labels = ["k"]
[[sources.queries.metrics]]
name = "reloaded_value"
column = "v"
"#,
        db.display()
    );
    let v = Vitals::start(&with_source);
    wait_value(&v, "reloaded_value", &[r#"k="b""#], 2.0);
    wait_value(&v, "vitals_sql_query_up", &[r#"source="reloaded""#], 1.0);

    let reload = |config: &str| {
        std::fs::write(v.config_dir().join("vitals.toml"), config).unwrap();
        let (status, body) = common::http(v.addr, "POST", "/-/reload", &[], b"").unwrap();
        assert_eq!(status, 200, "{body}");
    };
    reload("[system]\nenabled = false\n");
    wait_absent(&v, "reloaded_value", &[]);
    wait_absent(&v, "vitals_sql_query_up", &[r#"source="reloaded""#]);

    reload(&with_source);
    wait_value(&v, "reloaded_value", &[r#"k="a""#], 1.0);
    wait_value(&v, "vitals_sql_query_up", &[r#"source="reloaded""#], 1.0);
}
