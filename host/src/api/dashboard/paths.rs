//! Which paths are the dashboard's: the API's bearer check leaves them to
//! the session, and the browser guard checks their forms' origin.

/// Paths the dashboard serves.
pub fn is_dashboard_path(path: &str) -> bool {
    path == "/" || path == "/login" || path == "/logout" || path.starts_with("/ui/")
}

#[cfg(test)]
mod tests {
    use super::is_dashboard_path;

    #[test]
    fn dashboard_paths_are_told_from_the_apis() {
        for path in ["/", "/login", "/logout", "/ui/jobs", "/ui/assets/kiln.css"] {
            assert!(is_dashboard_path(path), "{path}");
        }
        for path in ["/jobs", "/ui", "/uix/jobs", "/metrics", "/openapi.json"] {
            assert!(!is_dashboard_path(path), "{path}");
        }
    }
}
