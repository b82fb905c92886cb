//! Error accumulation, so that one expansion reports every mistake it finds at once (serde's
//! `Ctxt`), and the fallback output that keeps the user's item when there are any.

use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};

/// The errors found so far in one use of the attribute.
///
/// Checks push into it and carry on, so a fn that is neither `async` nor takes an argument gets
/// both errors in one build. [`Errors::finish_with`] turns it into a `syn::Result`.
#[derive(Default)]
pub(crate) struct Errors {
    combined: Option<syn::Error>,
}

impl Errors {
    /// Records `error`.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.combined {
            Some(combined) => combined.combine(error),
            None => self.combined = Some(error),
        }
    }

    /// Records `message`, spanned from the first to the last token of `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// `true` when nothing was recorded.
    pub(crate) fn is_empty(&self) -> bool {
        self.combined.is_none()
    }

    /// `result` when nothing was recorded; otherwise every recorded error, then `result`'s
    /// error if it has one, combined into one.
    pub(crate) fn finish_with<T>(self, result: syn::Result<T>) -> syn::Result<T> {
        let recorded = self.combined.map_or(Ok(()), Err);
        both(recorded, result).map(|((), value)| value)
    }
}

/// Both values, or the errors of both.
pub(crate) fn both<A, B>(a: syn::Result<A>, b: syn::Result<B>) -> syn::Result<(A, B)> {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (Err(mut a), Err(b)) => {
            a.combine(b);
            Err(a)
        }
        (Err(error), Ok(_)) | (Ok(_), Err(error)) => Err(error),
    }
}

/// The output when the attribute is misused: the user's item unchanged, then the errors.
///
/// Keeping the item means the user sees our message and nothing else: no "cannot find function"
/// wherever the fn is called, and IDEs keep working on it (tokio's `token_stream_with_error`).
pub(crate) fn fallback(item: TokenStream, error: &syn::Error) -> TokenStream {
    let error = error.to_compile_error();
    quote!(#item #error)
}

/// Asserts that `messages` are exactly as many as `expected`, each containing its expected
/// part, in order: how the tests check that every mistake is reported at once.
#[cfg(test)]
pub(crate) fn assert_messages(messages: &[String], expected: &[&str]) {
    assert_eq!(messages.len(), expected.len(), "{messages:#?}");
    for (message, expected) in messages.iter().zip(expected) {
        assert!(
            message.contains(expected),
            "{message:?} should contain {expected:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use proc_macro2::Span;

    use super::*;

    fn messages<T>(result: syn::Result<T>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn finish_with_passes_the_result_through_without_errors() {
        assert_eq!(Errors::default().finish_with(Ok(7)).unwrap(), 7);
        let error = syn::Error::new(Span::call_site(), "own");
        assert_eq!(
            messages(Errors::default().finish_with::<()>(Err(error))),
            ["own"]
        );
    }

    #[test]
    fn finish_with_reports_every_error_in_order() {
        let mut errors = Errors::default();
        errors.push(syn::Error::new(Span::call_site(), "first"));
        errors.spanned(quote!(a b), "second");
        let own = syn::Error::new(Span::call_site(), "own");
        assert_eq!(
            messages(errors.finish_with::<()>(Err(own))),
            ["first", "second", "own"]
        );

        let mut errors = Errors::default();
        errors.push(syn::Error::new(Span::call_site(), "first"));
        assert_eq!(messages(errors.finish_with(Ok(7))), ["first"]);
    }

    #[test]
    fn both_keeps_both_errors() {
        let a = syn::Error::new(Span::call_site(), "a");
        let b = syn::Error::new(Span::call_site(), "b");
        assert_eq!(messages(both::<(), ()>(Err(a), Err(b))), ["a", "b"]);
        assert_eq!(both::<_, _>(Ok(1), Ok(2)).unwrap(), (1, 2));
    }

    #[test]
    fn fallback_keeps_the_item_and_appends_the_error() {
        let item = quote! { fn f() {} };
        let error = syn::Error::new(Span::call_site(), "bad");
        let output = fallback(item.clone(), &error).to_string();
        assert!(output.starts_with(&item.to_string()), "{output}");
        assert!(output.contains("compile_error"), "{output}");
    }
}
