//! Refusing a pod for its annotations, as Istio's injector does (`validateAnnotations` in
//! `pkg/kube/inject/validate.go`): every invalid annotation of a pod to inject is reported at
//! once, each as Istio words it, `invalid value '<value>' for annotation '<name>': <why>`, in
//! the list format of Istio's error list, and the pod is not admitted
//! ([`crate::review::Outcome::Refused`]).
//!
//! The annotations checked this way: the traffic annotations ([`crate::traffic`]), the status
//! port and readiness probe ([`crate::readiness`]), the sidecar's resources
//! ([`crate::resources`]), image, user volumes and mounts ([`crate::user_volumes`]) and
//! `prometheus.istio.io/merge-metrics` ([`crate::prometheus`]). Each module adds what it finds
//! to one [`Failures`], so a pod with several mistakes hears about all of them in one answer.
//! The pod's own `istio-proxy`/`istio-init` merged onto the injected ones ([`crate::overlay`])
//! is refused the same way when the merge gives a request above its limit.

use std::fmt;

/// The pod's invalid annotations: the reason it is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidAnnotations(
    /// One `invalid value '<value>' for annotation '<name>': <why>` per failure, in the order
    /// of the annotations' names.
    pub Vec<String>,
);

impl InvalidAnnotations {
    /// The refusal's message, in the format of Istio's error list (hashicorp's `multierror`):
    /// `1 error occurred:\n\t* <failure>\n\n`, or `N errors occurred:\n\t* <a>\n\t* <b>\n\n`.
    pub fn message(&self) -> String {
        let n = self.0.len();
        format!(
            "{n} {} occurred:\n\t* {}\n\n",
            if n == 1 { "error" } else { "errors" },
            self.0.join("\n\t* ")
        )
    }
}

impl fmt::Display for InvalidAnnotations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// Invalid annotations found so far, each with the annotation it names.
#[derive(Debug, Default)]
pub struct Failures(Vec<(String, String)>);

impl Failures {
    /// Records that annotation `name`, whose value is `value`, is invalid because of `why`.
    pub fn add(&mut self, name: &str, value: &str, why: impl fmt::Display) {
        self.0.push((
            name.to_owned(),
            format!("invalid value '{value}' for annotation '{name}': {why}"),
        ));
    }

    /// Records a failure that is not one annotation's (the pod's own containers), as a line of
    /// its own sorted under `key`.
    pub fn add_line(&mut self, key: &str, line: String) {
        self.0.push((key.to_owned(), line));
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was found, else the refusal, sorted by annotation name (stable:
    /// one annotation's failures keep the order they were found in).
    pub fn into_result<T>(mut self, value: T) -> Result<T, InvalidAnnotations> {
        if self.0.is_empty() {
            return Ok(value);
        }
        self.0.sort_by(|a, b| a.0.cmp(&b.0));
        Err(InvalidAnnotations(
            self.0.into_iter().map(|(_, m)| m).collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_sorted_by_annotation_in_istios_list_format() {
        let mut f = Failures::default();
        assert!(f.is_empty());
        f.add("b/two", "x", "bad x");
        f.add("a/one", "y", "bad y");
        f.add("b/two", "x", "and worse");
        let e = f.into_result(()).unwrap_err();
        assert_eq!(
            e.message(),
            "3 errors occurred:\n\
             \t* invalid value 'y' for annotation 'a/one': bad y\n\
             \t* invalid value 'x' for annotation 'b/two': bad x\n\
             \t* invalid value 'x' for annotation 'b/two': and worse\n\n"
        );
        let mut one = Failures::default();
        one.add("a", "", "empty");
        assert_eq!(
            one.into_result(()).unwrap_err().to_string(),
            "1 error occurred:\n\t* invalid value '' for annotation 'a': empty\n\n"
        );
        assert_eq!(Failures::default().into_result(7), Ok(7));
    }
}
