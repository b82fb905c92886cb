//! Generates the registration of a `#[bus::listener]` fn: the user's fn unchanged, then one
//! `const _: () = { .. };` block with a shim and an `inventory::submit!`.

use proc_macro2::{Ident, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;

use crate::diagnostics::fallback;
use crate::parse::{self, Listener, Takes};

/// The whole expansion of `#[bus::listener(args)] item`.
pub(crate) fn listener(args: TokenStream, item: TokenStream) -> TokenStream {
    match parse::listener(args, item.clone()) {
        Ok(listener) => {
            let registration = registration(&listener);
            quote!(#item #registration)
        }
        Err(error) => fallback(item, &error),
    }
}

/// The `const _` block that registers `listener`.
///
/// Calls that can fail to type-check are spanned at the user's tokens that decide them, so
/// rustc reports there: the return type for `ListenerOutput`, the argument type for
/// `CloneEvent`, the fn name for the listener's `Send` future. Those spans keep the macro's
/// hygiene (`Span::call_site().located_at(..)`, as tokio does), so lints see generated code
/// and stay quiet: with the user's own spans, `clippy::unused_async` fires on every listener
/// that does not await (`tests/ui/pass/strict_lints.rs` checks this).
fn registration(listener: &Listener) -> TokenStream {
    let Listener {
        name,
        krate,
        ident,
        event,
        takes,
        arg_span,
        output_span,
    } = listener;
    let bus_at = |span: Span| match krate {
        Some(path) => respan(path.to_token_stream(), span),
        None => quote_spanned!(span=> ::bus),
    };
    let bus = bus_at(Span::call_site());
    let at_ident = generated_at(ident.span());

    // The shim's own name and its argument: neither can clash with the user's fn, which the
    // shim calls (`Span::mixed_site` makes the local hygienic; items are not).
    let shim = if ident == "__listener" {
        Ident::new("__bus_listener", at_ident)
    } else {
        Ident::new("__listener", at_ident)
    };
    let event_arg = Ident::new("event", Span::mixed_site());

    let arg = match takes {
        Takes::Ref => quote!(&#event_arg),
        Takes::Arc => quote!(#event_arg),
        Takes::Value => {
            let (first, last) = (generated_at(arg_span.0), generated_at(arg_span.1));
            let bus = bus_at(first);
            let event_arg = Ident::new("event", Span::mixed_site().located_at(last));
            quote_spanned!(first=> #bus::__private::clone_event(&*#event_arg))
        }
    };
    let output = {
        let (first, last) = (generated_at(output_span.0), generated_at(output_span.1));
        let bus = bus_at(first);
        let mut call = ident.clone();
        call.set_span(first);
        let dot_await = quote_spanned!(last=> .await);
        quote_spanned!(first=> #bus::__private::into_result(#call(#arg) #dot_await))
    };
    let register = {
        let bus = bus_at(at_ident);
        quote_spanned!(at_ident=> #bus::__private::registration::<#event, _, _>(#shim, #ident))
    };
    let fn_name = ident.unraw().to_string();

    quote! {
        #[doc(hidden)]
        const _: () = {
            async fn #shim(#event_arg: #bus::__private::Arc<#event>) -> #bus::__private::ListenerResult {
                #output
            }
            #bus::__private::inventory::submit! {
                #bus::__private::StaticListener::new(
                    #name,
                    ::core::concat!(::core::module_path!(), "::", #fn_name),
                    ::core::file!(),
                    ::core::line!(),
                    ::core::column!(),
                    || #register,
                )
            }
        };
    }
}

/// A span for generated tokens that reports at `user`'s location but is still macro code.
fn generated_at(user: Span) -> Span {
    Span::call_site().located_at(user)
}

/// `tokens`, every one of them spanned at `span`.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut token| {
            if let TokenTree::Group(group) = &mut token {
                let mut respanned =
                    proc_macro2::Group::new(group.delimiter(), respan(group.stream(), span));
                respanned.set_span(span);
                *group = respanned;
            }
            token.set_span(span);
            token
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proc_macro2::{Delimiter, Spacing};

    use super::*;

    /// The expansion of `item` under `#[bus::listener(args)]`, split into the tokens of the
    /// user's fn and the rest; asserts that the user's fn comes first, unchanged.
    #[track_caller]
    fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
        let output: Vec<TokenTree> = listener(args, item.clone()).into_iter().collect();
        let item: Vec<TokenTree> = item.into_iter().collect();
        assert!(output.len() > item.len(), "nothing generated: {output:?}");
        let (kept, generated) = output.split_at(item.len());
        assert_eq!(
            TokenStream::from_iter(kept.iter().cloned()).to_string(),
            TokenStream::from_iter(item).to_string(),
            "the user's fn must come first, unchanged",
        );
        generated.iter().cloned().collect()
    }

    /// Asserts that `generated` is one `#[doc(hidden)] const _: () = { .. };` and nothing else.
    #[track_caller]
    fn assert_one_const_block(generated: &TokenStream) {
        let file: syn::File = syn::parse2(generated.clone()).expect("the generated code parses");
        match file.items.as_slice() {
            [syn::Item::Const(block)] => {
                assert_eq!(block.ident, "_");
                assert_eq!(block.ty.to_token_stream().to_string(), "()");
                assert_eq!(block.attrs.len(), 1);
                assert!(block.attrs[0].path().is_ident("doc"));
            }
            items => panic!("expected one `const _` block, got {} items", items.len()),
        }
    }

    /// Asserts that every path of two or more segments in `tokens` starts with `::`, so that
    /// no name in the user's scope can capture it.
    #[track_caller]
    fn assert_paths_are_absolute(tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let is_path_sep = |at: usize| {
            matches!(
                (tokens.get(at), tokens.get(at + 1)),
                (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                    if a.as_char() == ':' && a.spacing() == Spacing::Joint && b.as_char() == ':'
            )
        };
        for (at, token) in tokens.iter().enumerate() {
            match token {
                TokenTree::Ident(ident) if is_path_sep(at + 1) => assert!(
                    at >= 2 && is_path_sep(at - 2),
                    "the path starting at `{ident}` must start with `::`"
                ),
                TokenTree::Group(group) => assert_paths_are_absolute(group.stream()),
                _ => {}
            }
        }
    }

    #[test]
    fn adds_one_const_block_with_absolute_paths_for_each_form() {
        for arg in [
            quote!(event: &UserCreated),
            quote!(event: Arc<UserCreated>),
            quote!(event: UserCreated),
        ] {
            for output in [quote!(), quote!(-> Result<(), Error>)] {
                let item = quote! {
                    #[inline]
                    pub async fn on_user_created(#arg) #output {
                        let _ = event;
                        Ok(())
                    }
                };
                let generated = expand(quote!("user.created"), item);
                assert_one_const_block(&generated);
                assert_paths_are_absolute(generated);
            }
        }
    }

    #[test]
    fn calls_the_fn_as_it_takes_the_event() {
        let cases = [
            (quote!(event: &UserCreated), "on_user_created (& event)"),
            (quote!(event: Arc<UserCreated>), "on_user_created (event)"),
            (
                quote!(event: UserCreated),
                "on_user_created (:: bus :: __private :: clone_event (& * event))",
            ),
        ];
        for (arg, call) in cases {
            let generated = expand(quote!("a.b"), quote!(async fn on_user_created(#arg) {}));
            let generated = generated.to_string();
            assert!(generated.contains(call), "{call} not in {generated}");
            assert!(
                generated.contains(
                    "registration :: < UserCreated , _ , _ > (__listener , on_user_created)"
                ),
                "{generated}"
            );
        }
    }

    #[test]
    fn reaches_bus_through_the_crate_option() {
        let generated = expand(
            quote!("a.b", crate = "::my_app::bus"),
            quote! { async fn f(event: E) {} },
        );
        let text = generated.to_string();
        assert_eq!(
            text.matches(":: my_app :: bus :: __private ::").count(),
            7,
            "{text}"
        );
        assert_eq!(text.matches(":: bus ::").count(), 7, "{text}");
        assert_paths_are_absolute(generated);
    }

    #[test]
    fn names_the_shim_apart_from_the_users_fn() {
        let generated = expand(quote!("a.b"), quote! { async fn __listener(event: &E) {} });
        let text = generated.to_string();
        assert!(text.contains("async fn __bus_listener"), "{text}");
        assert!(text.contains("(__bus_listener , __listener)"), "{text}");
    }

    #[test]
    fn names_a_raw_identifier_without_its_prefix() {
        let generated = expand(quote!("a.b"), quote! { async fn r#try(event: &E) {} });
        let text = generated.to_string();
        assert!(text.contains(r#""::" , "try""#), "{text}");
        assert!(text.contains("r#try (& event)"), "{text}");
    }

    #[test]
    fn keeps_the_item_and_reports_the_error_when_misused() {
        let item = quote! { fn on_user_created(event: &UserCreated) {} };
        let output = listener(quote!("user.created"), item.clone());
        let text = output.to_string();
        assert!(text.starts_with(&item.to_string()), "{text}");
        let rest = &text[item.to_string().len()..];
        assert!(rest.contains("compile_error"), "{rest}");
        assert!(!rest.contains("const _"), "{rest}");
    }

    #[test]
    fn never_panics_on_odd_input() {
        let cases = [
            (quote!(), quote!()),
            (quote!(,,), quote! { async fn f(event: &E) {} }),
            (quote!("a.b"), quote!(async fn)),
            (
                quote!("a.b"),
                quote!({
                    async fn f(event: &E) {}
                }),
            ),
        ];
        for (args, item) in cases {
            let output = listener(args, item).to_string();
            assert!(output.contains("compile_error"), "{output}");
        }
    }

    /// The expansion of the README's example, pretty-printed. Regenerate with
    /// `BUS_OVERWRITE_SNAPSHOTS=1 cargo test -p bus-macros`, then review the diff.
    #[test]
    fn expansion_snapshot() {
        let item = quote! {
            async fn on_user_created(event: &UserCreated) {
                println!("welcome, {}", event.name);
            }
        };
        let output = listener(quote!("user.created"), item);
        let actual = pretty_print(output);

        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/expand/on_user_created.expanded.rs");
        if std::env::var_os("BUS_OVERWRITE_SNAPSHOTS").is_some_and(|value| value == "1") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &actual).unwrap();
            return;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            actual == expected,
            "the expansion differs from {}; if the change is intended, rerun with \
             BUS_OVERWRITE_SNAPSHOTS=1 and review the new file\n{}",
            path.display(),
            diff_lines(&expected, &actual).join("\n"),
        );
    }

    /// `tokens` as `prettyplease` prints them, except that the body of `inventory::submit!`,
    /// which it prints token by token as it does for any macro it does not know, is printed as
    /// the expression it is.
    fn pretty_print(tokens: TokenStream) -> String {
        let file: syn::File = syn::parse2(tokens).expect("the expansion parses as a file");
        let printed = prettyplease::unparse(&file);

        let submit = find_submit(&file).expect("the expansion calls `inventory::submit!`");
        let body: syn::Expr = submit.parse_body().expect("`submit!` holds an expression");
        let body = prettyplease::unparse(&syn::parse_quote!(const _: () = #body;));
        let body = body
            .strip_prefix("const _: () = ")
            .unwrap()
            .trim_end()
            .trim_end_matches(';');
        let indented: Vec<String> = body.lines().map(|line| format!("        {line}")).collect();

        let open =
            printed.find("submit! {\n").expect("`submit! {` is printed") + "submit! {\n".len();
        let close = open
            + printed[open..]
                .find("\n    }\n")
                .expect("`submit!` is closed");
        format!(
            "{}{}{}",
            &printed[..open],
            indented.join("\n"),
            &printed[close..]
        )
    }

    fn find_submit(file: &syn::File) -> Option<&syn::Macro> {
        let syn::Item::Const(block) = file.items.get(1)? else {
            return None;
        };
        let syn::Expr::Block(block) = &*block.expr else {
            return None;
        };
        block.block.stmts.iter().find_map(|stmt| match stmt {
            syn::Stmt::Macro(stmt) if stmt.mac.path.segments.last()?.ident == "submit" => {
                Some(&stmt.mac)
            }
            syn::Stmt::Item(syn::Item::Macro(item))
                if item.mac.path.segments.last()?.ident == "submit" =>
            {
                Some(&item.mac)
            }
            _ => None,
        })
    }

    /// The lines of `expected` and `actual` that differ, as `-` and `+` lines.
    fn diff_lines(expected: &str, actual: &str) -> Vec<String> {
        let (expected, actual): (Vec<&str>, Vec<&str>) =
            (expected.lines().collect(), actual.lines().collect());
        let mut diff = Vec::new();
        for line in 0..expected.len().max(actual.len()) {
            match (expected.get(line), actual.get(line)) {
                (Some(e), Some(a)) if e == a => {}
                (e, a) => {
                    diff.extend(e.map(|e| format!("{:>4} - {e}", line + 1)));
                    diff.extend(a.map(|a| format!("{:>4} + {a}", line + 1)));
                }
            }
        }
        diff
    }

    #[test]
    fn respan_reaches_into_groups() {
        let span = Span::call_site();
        let respanned = respan(quote!(a::b(c, [d])), span);
        assert_eq!(respanned.to_string(), "a :: b (c , [d])");
        let group = respanned.into_iter().find_map(|token| match token {
            TokenTree::Group(group) if group.delimiter() == Delimiter::Parenthesis => Some(group),
            _ => None,
        });
        assert!(group.is_some());
    }
}
