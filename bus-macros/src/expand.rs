//! Generates the registration of a `#[bus::listener]` fn: the user's fn unchanged, then one
//! `const _: () = { .. };` block with a shim and an `inventory::submit!`.

use std::time::Duration;

use proc_macro2::{Ident, Literal, Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;

use crate::diagnostics::fallback;
use crate::parse::{self, GroupOption, Listener, PolicyOptions, Takes};

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
        once,
        policy,
        ident,
        event,
        takes,
        arg_span,
        output_span,
        envelope,
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
    let envelope_arg = Ident::new("envelope", Span::mixed_site());

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
        let envelope = envelope.map(|(takes, span)| {
            let span = generated_at(span);
            let envelope_arg = Ident::new("envelope", Span::mixed_site().located_at(span));
            match takes {
                Takes::Ref => quote_spanned!(span=> , &#envelope_arg),
                Takes::Arc | Takes::Value => quote_spanned!(span=> , #envelope_arg),
            }
        });
        quote_spanned!(first=> #bus::__private::into_result(#call(#arg #envelope) #dot_await))
    };
    // The shim takes the envelope only when the fn does: the bus makes one for those alone.
    let envelope_param = envelope.map(|_| quote!(, #envelope_arg: #bus::__private::Envelope));
    // Without a name in the attribute, the event type names the event. A type that is not an
    // `Event` is reported at the argument's type, through `Event`'s `on_unimplemented`.
    let name = match name {
        Some(name) => name.to_token_stream(),
        None => {
            let (first, last) = (generated_at(arg_span.0), generated_at(arg_span.1));
            let event_trait = {
                let bus = bus_at(first);
                quote_spanned!(last=> #bus::__private::Event)
            };
            quote_spanned!(first=> <#event as #event_trait>::NAME)
        }
    };
    let register = {
        let bus = bus_at(at_ident);
        // The shim's arguments, named so that the compiler picks its `Listener` impl: a future
        // that is not `Send` is then reported as such, where it is not.
        let args = match envelope {
            Some(_) => {
                quote_spanned!(at_ident=> (#bus::__private::Arc<#event>, #bus::__private::Envelope))
            }
            None => quote_spanned!(at_ident=> (#bus::__private::Arc<#event>,)),
        };
        let once = once.then(|| quote_spanned!(at_ident=> .once()));
        let policy = (!policy.is_empty()).then(|| {
            let policy = policy_expr(policy, &bus);
            quote_spanned!(at_ident=> .policy(#policy))
        });
        quote_spanned! {at_ident=>
            #bus::__private::registration::<#event, _, #args, _>(#shim, #ident) #once #policy
        }
    };
    let fn_name = ident.unraw().to_string();

    quote! {
        #[doc(hidden)]
        const _: () = {
            async fn #shim(#event_arg: #bus::__private::Arc<#event> #envelope_param) -> #bus::__private::ListenerResult {
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

/// `bus::Policy::new()` with the options of `policy` set, in the order `Policy` documents them.
fn policy_expr(policy: &PolicyOptions, bus: &TokenStream) -> TokenStream {
    let PolicyOptions {
        concurrency,
        timeout,
        retry,
        backoff,
        group,
    } = policy;
    let concurrency = concurrency.map(|limit| {
        let limit = Literal::usize_unsuffixed(limit);
        quote!(.concurrency(#limit))
    });
    let timeout = timeout.map(|timeout| {
        let timeout = duration_expr(timeout, bus);
        quote!(.timeout(#timeout))
    });
    let retry = retry.map(|retries| {
        let retries = Literal::u32_unsuffixed(retries);
        quote!(.retry(#retries))
    });
    let backoff = backoff.map(|backoff| {
        let backoff = duration_expr(backoff, bus);
        quote!(.backoff(#backoff))
    });
    let group = group.as_ref().map(|group| match group {
        GroupOption::Ungrouped => quote!(.group(#bus::__private::Group::Ungrouped)),
        GroupOption::Named(name) => quote!(.group(#bus::__private::Group::Named(#name))),
    });
    quote!(#bus::__private::Policy::new() #concurrency #timeout #retry #backoff #group)
}

/// A `Duration` expression for `duration`, in the largest unit that holds it exactly, so that
/// it reads as written: `"5s"` is `Duration::from_secs(5)`, `"100ms"` is
/// `Duration::from_millis(100)`.
fn duration_expr(duration: Duration, bus: &TokenStream) -> TokenStream {
    let (secs, nanos) = (duration.as_secs(), duration.subsec_nanos());
    let (constructor, value) = if nanos == 0 {
        ("from_secs", Some(secs))
    } else if nanos % 1_000_000 == 0 {
        ("from_millis", u64::try_from(duration.as_millis()).ok())
    } else if nanos % 1_000 == 0 {
        ("from_micros", u64::try_from(duration.as_micros()).ok())
    } else {
        ("from_nanos", u64::try_from(duration.as_nanos()).ok())
    };
    match value {
        Some(value) => {
            let constructor = Ident::new(constructor, Span::call_site());
            let value = Literal::u64_unsuffixed(value);
            quote!(#bus::__private::Duration::#constructor(#value))
        }
        // Too many units for a `u64`: seconds and nanoseconds.
        None => {
            let (secs, nanos) = (
                Literal::u64_unsuffixed(secs),
                Literal::u32_unsuffixed(nanos),
            );
            quote!(#bus::__private::Duration::new(#secs, #nanos))
        }
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
    use proc_macro2::{Delimiter, Spacing};

    use super::*;
    use crate::snapshot;

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
                // `as` in `<E as ::bus::Event>` is followed by `::` but starts no path.
                TokenTree::Ident(ident) if ident != "as" && is_path_sep(at + 1) => assert!(
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
            (
                quote!(event: &UserCreated, envelope: &bus::Envelope),
                "on_user_created (& event , & envelope)",
            ),
            (
                quote!(event: &UserCreated, envelope: bus::Envelope),
                "on_user_created (& event , envelope)",
            ),
        ];
        for (arg, call) in cases {
            let generated = expand(quote!("a.b"), quote!(async fn on_user_created(#arg) {}));
            let generated = generated.to_string();
            assert!(generated.contains(call), "{call} not in {generated}");
            let args = if call.contains("envelope") {
                "(:: bus :: __private :: Arc < UserCreated > , :: bus :: __private :: Envelope)"
            } else {
                "(:: bus :: __private :: Arc < UserCreated > ,)"
            };
            let registration = format!(
                "registration :: < UserCreated , _ , {args} , _ > (__listener , on_user_created)"
            );
            assert!(generated.contains(&registration), "{generated}");
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
            8,
            "{text}"
        );
        assert_eq!(text.matches(":: bus ::").count(), 8, "{text}");
        assert_paths_are_absolute(generated);
    }

    /// A listener never makes its event type distributed: only the type's derive or the
    /// builder says so.
    #[test]
    fn one_inventory_node_per_listener_and_no_codec() {
        let text = expand(quote!("a.b"), quote! { async fn f(event: &E) {} }).to_string();
        assert_eq!(text.matches("inventory :: submit !").count(), 1, "{text}");
        assert!(!text.contains("codec") && !text.contains("Codec"), "{text}");
    }

    #[test]
    fn takes_the_name_from_the_event_type_when_none_is_given() {
        for (args, bus) in [(quote!(), ":: bus"), (quote!(crate = "renamed"), "renamed")] {
            for arg in [
                quote!(e: &UserCreated),
                quote!(e: Arc<UserCreated>),
                quote!(e: UserCreated),
            ] {
                let generated = expand(args.clone(), quote!(async fn f(#arg) {}));
                assert_one_const_block(&generated);
                let text = generated.to_string();
                let name = format!(
                    "StaticListener :: new (< UserCreated as {bus} :: __private :: Event > :: NAME ,"
                );
                assert!(text.contains(&name), "{name} not in {text}");
            }
        }
    }

    #[test]
    fn sets_once_and_the_policy_on_the_registration() {
        let item = quote! { async fn f(event: &E) {} };
        let register = ":: bus :: __private :: registration :: < E , _ , (:: bus :: __private :: Arc < E > ,) , _ > (__listener , f)";

        let plain = expand(quote!("a.b"), item.clone()).to_string();
        assert!(plain.contains(&format!("|| {register} ,")), "{plain}");

        let once = expand(quote!("a.b", once), item.clone()).to_string();
        assert!(
            once.contains(&format!("|| {register} . once () ,")),
            "{once}"
        );

        let generated = expand(
            quote!(
                retry = 3,
                once,
                backoff = "1.5s",
                concurrency = 2,
                timeout = "250ms"
            ),
            item.clone(),
        );
        assert_paths_are_absolute(generated.clone());
        let text = generated.to_string();
        let policy = ":: bus :: __private :: Policy :: new () \
            . concurrency (2) \
            . timeout (:: bus :: __private :: Duration :: from_millis (250)) \
            . retry (3) \
            . backoff (:: bus :: __private :: Duration :: from_millis (1500))";
        assert!(
            text.contains(&format!("|| {register} . once () . policy ({policy}) ,")),
            "{text}"
        );

        let retry_only = expand(quote!("a.b", retry = 1), item).to_string();
        assert!(
            retry_only.contains(&format!(
                "|| {register} . policy (:: bus :: __private :: Policy :: new () . retry (1)) ,"
            )),
            "{retry_only}"
        );
    }

    #[test]
    fn writes_durations_in_the_largest_exact_unit() {
        let bus = quote!(::bus);
        #[rustfmt::skip]
        let cases = [
            (Duration::from_secs(5), "from_secs (5)"),
            (Duration::ZERO, "from_secs (0)"),
            (Duration::from_secs(90), "from_secs (90)"),
            (Duration::from_millis(100), "from_millis (100)"),
            (Duration::from_millis(1500), "from_millis (1500)"),
            (Duration::from_micros(1), "from_micros (1)"),
            (Duration::from_nanos(1_000_001), "from_nanos (1000001)"),
            (Duration::new(u64::MAX, 0), "from_secs (18446744073709551615)"),
            (Duration::new(u64::MAX, 1_000_000), "new (18446744073709551615 , 1000000)"),
            (Duration::new(u64::MAX, 1), "new (18446744073709551615 , 1)"),
        ];
        for (duration, expected) in cases {
            let text = duration_expr(duration, &bus).to_string();
            assert_eq!(
                text,
                format!(":: bus :: __private :: Duration :: {expected}")
            );
        }
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
        snapshot::assert_matches("on_user_created.expanded.rs", &pretty_print(output));
    }

    /// The expansion of a listener that takes its name from its event type, with every option.
    #[test]
    fn expansion_snapshot_with_options() {
        let item = quote! {
            async fn charge(order: Arc<OrderPlaced>, envelope: &bus::Envelope) -> Result<(), PaymentError> {
                payments::charge(envelope.id(), order.total).await
            }
        };
        let args = quote!(
            once,
            concurrency = 1,
            timeout = "5s",
            retry = 3,
            backoff = "100ms"
        );
        let output = listener(args, item);
        snapshot::assert_matches("charge.expanded.rs", &pretty_print(output));
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
