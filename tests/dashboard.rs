//! The dashboard of the real `kiln serve`: a login with a key gives an
//! `HttpOnly`, `SameSite=Strict` session cookie that opens the pages and
//! never the API; a form without the session's CSRF token, or from
//! another origin, changes nothing; a tenant sees only its own jobs. Then
//! a real headless Chromium over WebDriver does what an operator does:
//! loads the overview, filters to the dead jobs, opens one and reads its
//! error and logs, retries it by a click and sees it complete, pauses a
//! queue by a click. Screenshots land in the target directory.

use crate::support::host::{Host, HostDir, eventually};
use crate::support::{built, new_api_key};
use crate::tenants::{CONFIG, Client, add_tenant_plugin};
use serde_json::json;

struct Setup {
    _dir: HostDir,
    host: Host,
    admin: String,
    acme: String,
    beta: String,
}

fn setup() -> Setup {
    let (admin, admin_hash) = new_api_key();
    let (acme, acme_hash) = new_api_key();
    let (beta, beta_hash) = new_api_key();
    let config = format!(
        "{CONFIG}\n[queues.mail]\nconcurrency = 2\n\n[admin]\napi_keys = [\"{admin_hash}\"]\n\n[tenants.acme]\napi_keys = [\"{acme_hash}\"]\n\n[tenants.beta]\napi_keys = [\"{beta_hash}\"]\n"
    );
    let dir = HostDir::new(&config);
    for tenant in ["acme", "beta"] {
        add_tenant_plugin(&dir, tenant, built::ECHO, "1.0.0");
        add_tenant_plugin(&dir, tenant, built::FLAKY, "1.0.0");
    }
    let host = dir.start();
    Setup { _dir: dir, host, admin, acme, beta }
}

/// A browser's plain HTTP, redirects not followed: status, headers, body.
fn call(host: &Host, method: &str, path: &str, cookie: Option<&str>, form: Option<&str>, origin: Option<&str>) -> (u16, http::HeaderMap, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).max_redirects(0).max_idle_connections(0).build().into();
    let mut request = http::Request::builder().method(method).uri(format!("{}{path}", host.url));
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    if let Some(origin) = origin {
        request = request.header("origin", origin);
    }
    if form.is_some() {
        request = request.header("content-type", "application/x-www-form-urlencoded");
    }
    let mut response = agent.run(request.body(form.unwrap_or("").to_string()).unwrap()).unwrap();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (response.status().as_u16(), response.headers().clone(), text)
}

/// Logs in with `key`; returns the `name=value` of the session cookie and the full Set-Cookie line.
fn login(host: &Host, key: &str) -> (String, String) {
    let (status, headers, body) = call(host, "POST", "/login", None, Some(&format!("key={key}")), None);
    assert_eq!(status, 303, "{body}");
    assert_eq!(headers["location"], "/");
    let set = headers["set-cookie"].to_str().unwrap().to_string();
    (set.split(';').next().unwrap().to_string(), set)
}

/// The CSRF token a page's forms carry.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("the page has a form") + "name=\"csrf\" value=\"".len();
    page[at..].split('"').next().unwrap().to_string()
}

fn queue_paused(host: &Host, admin: &str, queue: &str) -> bool {
    let queues = Client { host, key: Some(admin.to_string()) }.ok("GET", "/queues", None);
    queues["queues"].as_array().unwrap().iter().find(|q| q["name"] == queue).unwrap()["paused"].as_bool().unwrap()
}

#[test]
fn a_login_gives_a_strict_session_cookie_that_opens_the_pages_only_and_forms_need_its_token_and_origin() {
    let s = setup();
    let host = &s.host;
    // No session: to the login page, which asks for a key.
    let (status, headers, _) = call(host, "GET", "/", None, None, None);
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/login"));
    let (status, _, page) = call(host, "GET", "/login", None, None, None);
    assert!(status == 200 && page.contains("name=\"key\""), "{status} {page}");
    // Wrong, empty and oversized keys are refused, naming why.
    for (form, why) in [("key=not-a-key", "not one this host knows"), ("key=", "no key was given"), (&*format!("key={}", "k".repeat(2000)), "over 1024 bytes")] {
        let (status, headers, page) = call(host, "POST", "/login", None, Some(form), None);
        assert_eq!(status, 401, "{form}: {page}");
        assert!(page.contains(why), "{why}: {page}");
        assert!(!headers.contains_key("set-cookie"));
    }
    let (acme, set) = login(host, &s.acme);
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/"), "{set}");
    assert!(!acme.contains(&s.acme), "the cookie is a session id, not the key");
    let (status, _, page) = call(host, "GET", "/", Some(&acme), None, None);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("<span id=\"who\">acme</span>"), "{page}");
    // The cookie opens no API route: those take a bearer key only.
    assert_eq!(call(host, "GET", "/jobs", Some(&acme), None, None).0, 401);

    // A tenant sees its own jobs; another tenant's job is not found.
    let beta = Client { host, key: Some(s.beta.clone()) };
    let acme_api = Client { host, key: Some(s.acme.clone()) };
    let b_job = beta.enqueue(json!({"kind": "echo", "payload": {"secret": "beta-only"}}));
    let a_job = acme_api.enqueue(json!({"kind": "echo", "payload": {"mine": "acme"}}));
    acme_api.wait_for(a_job, "completed");
    let (status, _, page) = call(host, "GET", &format!("/ui/jobs/{b_job}"), Some(&acme), None, None);
    assert_eq!(status, 404, "{page}");
    assert!(!page.contains("beta-only"));
    let (_, _, list) = call(host, "GET", "/ui/jobs", Some(&acme), None, None);
    assert!(list.contains(&format!("data-id=\"{a_job}\"")) && !list.contains(&format!("data-id=\"{b_job}\"")), "{list}");
    let (status, _, page) = call(host, "GET", &format!("/ui/jobs/{a_job}"), Some(&acme), None, None);
    assert!(status == 200 && page.contains("&#34;mine&#34;: &#34;acme&#34;"), "the payload, HTML-escaped: {page}");

    // Forms: without the token, with another session's, from another origin: refused, nothing changes.
    let admin = login(host, &s.admin).0;
    let (_, _, admin_page) = call(host, "GET", "/ui/queues", Some(&admin), None, None);
    let token = csrf_of(&admin_page);
    let own = Some(host.url.as_str());
    for (cookie, form, origin, want) in [
        (&admin, "".to_string(), own, 403),
        (&admin, "csrf=0000".to_string(), own, 403),
        (&acme, format!("csrf={token}"), own, 403),
        (&admin, format!("csrf={token}"), Some("http://evil.example"), 403),
    ] {
        let (status, _, page) = call(host, "POST", "/ui/queues/default/pause", Some(cookie), Some(&form), origin);
        assert_eq!(status, want, "{form} from {origin:?}: {page}");
        assert!(!queue_paused(host, &s.admin, "default"));
    }
    // A tenant's own token still cannot pause a queue: that is the operator's.
    let (_, _, acme_page) = call(host, "GET", "/ui/queues", Some(&acme), None, None);
    assert!(!acme_page.contains("class=\"pause\""), "no pause button for a tenant");
    let (status, _, page) = call(host, "POST", "/ui/queues/default/pause", Some(&acme), Some(&format!("csrf={}", csrf_of(&acme_page))), own);
    assert!(status == 403 && page.contains("operator"), "{status} {page}");
    assert!(!queue_paused(host, &s.admin, "default"));
    let (status, headers, _) = call(host, "POST", "/ui/queues/default/pause", Some(&admin), Some(&format!("csrf={token}")), own);
    assert_eq!((status, headers["location"].to_str().unwrap()), (303, "/ui/queues?done=paused"));
    assert!(queue_paused(host, &s.admin, "default"));

    // Logout ends the session: the old cookie opens nothing.
    let (status, headers, _) = call(host, "POST", "/logout", Some(&admin), Some(&format!("csrf={token}")), own);
    assert_eq!(status, 303);
    assert!(headers["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(call(host, "GET", "/ui/queues", Some(&admin), None, None).0, 303);
    // A forged cookie is no session.
    assert_eq!(call(host, "GET", "/", Some(&format!("kiln_session={}", "ab".repeat(32))), None, None).0, 303);
}

#[test]
fn an_open_host_opens_an_operators_session_and_shows_its_plugins_schedules_and_loops() {
    let dir = HostDir::new("lease_ms = 1500\npoll_interval_ms = 100\n\n[queues.default]\nconcurrency = 2\n");
    dir.add_plugin("cleanup", built::CLEANUP, "name = \"cleanup\"\nversion = \"1.0.0\"\n[capabilities]\nkv = [\"default\"]\n[trigger.schedule]\ninterval = \"400ms\"\n");
    dir.add_plugin(
        "poller",
        built::POLLER,
        "name = \"poller\"\nversion = \"1\"\n[trigger.continuous]\ndelay = \"20ms\"\n\
         [capabilities]\nhttp = [\"http://127.0.0.1:*\"]\nconfig = [\"feed_url\"]\nkv = [\"default\"]\n",
    );
    let host = dir.start();
    let (status, headers, _) = call(&host, "GET", "/login", None, None, None);
    assert_eq!(status, 303);
    let cookie = headers["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let (status, _, page) = call(&host, "GET", "/", Some(&cookie), None, None);
    assert!(status == 200 && page.contains("<span id=\"who\">operator</span>"), "{page}");
    let page_of = |path: &str| {
        let (status, _, page) = call(&host, "GET", path, Some(&cookie), None, None);
        assert_eq!(status, 200, "{path}: {page}");
        page
    };
    let plugins = page_of("/ui/plugins");
    for name in ["echo", "cleanup", "poller"] {
        assert!(plugins.contains(&format!("data-plugin=\"{name}\"")), "{name}: {plugins}");
    }
    assert!(plugins.contains("every 400ms"), "{plugins}");
    // The schedule has ticked: a last tick, and a next one.
    eventually("the schedules page shows a last tick", || !page_of("/ui/schedules").contains("<td>never</td>"));
    let schedules = page_of("/ui/schedules");
    assert!(schedules.contains("data-plugin=\"cleanup\"") && schedules.contains("every 400ms"), "{schedules}");
    // The loop is held by this host, with its passes and checkpoint.
    eventually("the loops page shows the poller held", || {
        let loops = page_of("/ui/loops");
        loops.contains("data-plugin=\"poller\"") && !loops.contains("<td>nobody</td>")
    });
    assert!(!page_of("/ui/loops").contains("No loop has run"));
    // Unknown pages and actions are named, not served.
    let (status, _, page) = call(&host, "GET", "/ui/jobs?state=nonsense", Some(&cookie), None, None);
    assert!(status == 400 && page.contains("nonsense"), "{page}");
    let (status, _, _) = call(&host, "GET", "/ui/jobs?id=12x", Some(&cookie), None, None);
    assert_eq!(status, 400);
}

mod browser {
    //! The same host driven by a real headless Chromium.

    use super::*;
    use fantoccini::{Client as Browser, Locator};
    use crate::support::browser::{shot, start_browser};
    use std::time::{Duration, Instant};

    async fn text_of(browser: &Browser, css: &str) -> String {
        browser.wait().for_element(Locator::Css(css)).await.unwrap().text().await.unwrap()
    }

    /// Reloads until `css`'s text holds `want`.
    async fn reload_until(browser: &Browser, css: &str, want: &str) {
        let started = Instant::now();
        loop {
            let text = browser.find(Locator::Css(css)).await.map(|_| ()).ok();
            if text.is_some() && text_of(browser, css).await.contains(want) {
                return;
            }
            assert!(started.elapsed() < crate::support::host::PATIENCE, "{css} never showed {want:?}: {}", browser.source().await.unwrap());
            tokio::time::sleep(Duration::from_millis(300)).await;
            browser.refresh().await.unwrap();
        }
    }

    async fn log_in(browser: &Browser, url: &str, key: &str) {
        browser.goto(&format!("{url}/")).await.unwrap();
        assert!(browser.current_url().await.unwrap().path().ends_with("/login"), "no session: the login page");
        browser.find(Locator::Id("key")).await.unwrap().send_keys(key).await.unwrap();
        browser.find(Locator::Id("login")).await.unwrap().click().await.unwrap();
        browser.wait().for_element(Locator::Id("queues")).await.unwrap();
    }

    #[test]
    #[cfg_attr(not(kiln_browser), ignore = "needs Chromium and chromedriver: set KILN_TEST_CHROMEDRIVER (.ci/run installs them)")]
    fn an_operator_in_chromium_finds_a_dead_job_reads_its_logs_retries_it_and_pauses_a_queue() {
        let s = setup();
        let host = &s.host;
        let acme = Client { host, key: Some(s.acme.clone()) };
        let beta = Client { host, key: Some(s.beta.clone()) };
        // Work for the charts, and one job that dies after logging, and beta's own dead job.
        for i in 0..40 {
            acme.enqueue(json!({"kind": "echo", "payload": {"n": i}, "queue": if i % 4 == 0 { "mail" } else { "default" }}));
        }
        let dead = acme.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1, "log_lines": 4}, "max_attempts": 1}));
        let beta_dead = beta.enqueue(json!({"kind": "flaky", "payload": {"fail_attempts": 1}, "max_attempts": 1}));
        acme.wait_for(dead, "dead");
        beta.wait_for(beta_dead, "dead");

        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (_driver, browser) = start_browser().await;
            log_in(&browser, &host.url, &s.acme).await;
            assert_eq!(text_of(&browser, "#who").await, "acme");
            shot(&browser, "overview-acme").await;

            // Filter to the dead jobs: acme's is there, beta's is not.
            browser.find(Locator::Id("nav-dead")).await.unwrap().click().await.unwrap();
            let row = format!("tr[data-id=\"{dead}\"]");
            browser.wait().for_element(Locator::Css(&row)).await.unwrap();
            assert!(browser.find(Locator::Css(&format!("tr[data-id=\"{beta_dead}\"]"))).await.is_err(), "beta's dead job is not acme's to see");
            assert!(text_of(&browser, &row).await.contains("upstream unavailable (attempt 1)"));
            // The filter form: state dead, kind echo shows none of them.
            browser.find(Locator::Css("#filter-kind option[value=\"echo\"]")).await.unwrap().click().await.unwrap();
            browser.find(Locator::Id("apply")).await.unwrap().click().await.unwrap();
            browser.wait().for_element(Locator::Css("td.empty")).await.unwrap();
            browser.find(Locator::Css("#filter-kind option[value=\"\"]")).await.unwrap().click().await.unwrap();
            browser.find(Locator::Id("apply")).await.unwrap().click().await.unwrap();
            browser.wait().for_element(Locator::Css(&row)).await.unwrap();
            shot(&browser, "dead-letters").await;

            // Its page: the attempt's error and its own log lines.
            browser.find(Locator::Css(&format!("{row} a"))).await.unwrap().click().await.unwrap();
            assert_eq!(text_of(&browser, "#job-state").await, "dead");
            let attempts = text_of(&browser, "#attempts").await;
            assert!(attempts.contains("upstream unavailable (attempt 1)"), "{attempts}");
            let logs = text_of(&browser, "#logs").await;
            for line in 0..4 {
                assert!(logs.contains(&format!("attempt 1 line {line}")), "{logs}");
            }
            shot(&browser, "job").await;

            // Retry by a click: it runs again and completes (flaky fails attempt 1 only).
            browser.find(Locator::Id("retry")).await.unwrap().click().await.unwrap();
            assert!(text_of(&browser, "#notice").await.contains("Retried"));
            reload_until(&browser, "#job-state", "completed").await;
            assert!(text_of(&browser, "#result").await.contains("succeeded_on_attempt"));
            assert_eq!(acme.ok("GET", &format!("/jobs/{dead}"), None)["state"], "completed");

            // Another tenant's job by its URL: not found.
            browser.goto(&format!("{}/ui/jobs/{beta_dead}", host.url)).await.unwrap();
            assert!(text_of(&browser, "#error").await.contains("not found"));

            // The charts fill as this host writes its runs per minute (every 10 s).
            browser.goto(&format!("{}/", host.url)).await.unwrap();
            reload_until(&browser, "#runs-hour", "42").await;
            assert!(browser.find(Locator::Css("svg.chart rect.ok")).await.is_ok(), "bars in the throughput chart");
            let default_done = text_of(&browser, "tr[data-queue=\"default\"] td[data-state=\"completed\"]").await;
            assert_eq!(default_done, "31", "30 echo jobs and the retried one on default, for acme");

            // Log out; the operator pauses a queue by a click.
            browser.find(Locator::Css("form.who button")).await.unwrap().click().await.unwrap();
            log_in(&browser, &host.url, &s.admin).await;
            shot(&browser, "overview").await;
            browser.goto(&format!("{}/ui/queues", host.url)).await.unwrap();
            browser.find(Locator::Css("tr[data-queue=\"mail\"] button.pause")).await.unwrap().click().await.unwrap();
            assert!(text_of(&browser, "#notice").await.contains("paused"));
            assert!(text_of(&browser, "tr[data-queue=\"mail\"]").await.contains("paused"));
            assert!(queue_paused(host, &s.admin, "mail"));
            assert!(!queue_paused(host, &s.admin, "default"));
            shot(&browser, "queues").await;
            browser.find(Locator::Css("tr[data-queue=\"mail\"] button.resume")).await.unwrap().click().await.unwrap();
            assert!(!queue_paused(host, &s.admin, "mail"));

            // Bulk: the operator discards every dead job beta has, confirming the dialog.
            browser.goto(&format!("{}/ui/jobs?state=dead", host.url)).await.unwrap();
            browser.wait().for_element(Locator::Css(&format!("tr[data-id=\"{beta_dead}\"]"))).await.unwrap();
            browser.find(Locator::Id("check-all")).await.unwrap().click().await.unwrap();
            browser.find(Locator::Id("discard-selected")).await.unwrap().click().await.unwrap();
            browser.accept_alert().await.unwrap();
            assert!(text_of(&browser, "#notice").await.contains("Discarded 1 dead jobs"));
            assert_eq!(beta.call("GET", &format!("/jobs/{beta_dead}"), None).0, 404);
            browser.close().await.unwrap();
        });
        eventually("nothing else is dead", || Client { host, key: Some(s.admin.clone()) }.ok("GET", "/jobs?state=dead", None)["jobs"].as_array().unwrap().is_empty());
    }
}
