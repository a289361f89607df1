//! A component for another world (`kiln-test:greeter`): loading it as a
//! Kiln plugin must fail with a clear error.

wit_bindgen::generate!({ path: "wit", world: "greeter" });

struct Greeter;

impl Guest for Greeter {
    fn greet(name: String) -> String {
        format!("hello, {name}")
    }
}

export!(Greeter);
