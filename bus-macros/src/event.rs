//! `#[derive(bus::Event)]`: reads `#[event(name = "..")]` and implements `bus::Event` with that
//! name, checked at compile time against the runtime's event-name rules; with
//! `#[event(.., distributed)]`, also submits the type's JSON codec, so that it travels through
//! the broker of a bus with a transport.
//!
//! The derive is small enough to be read and generated in one module; it shares the `crate`
//! option and the error accumulation with `#[bus::listener]`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Attribute, DeriveInput, Expr, ExprLit, Lit, LitStr, Meta, Path, Token, WherePredicate,
    parse_quote,
};

use crate::diagnostics::Errors;
use crate::parse::{self, Arg, crate_path};

/// What `#[event(..)]` says about the type.
#[derive(Default)]
struct EventArgs {
    /// `name = "user.created"`, checked against the event-name rules.
    name: Option<LitStr>,
    /// `crate = "path"`: where to find `bus` when it is not `::bus`.
    krate: Option<Path>,
    /// `distributed`: the type travels through the broker; the span of the flag.
    distributed: Option<Span>,
}

/// The whole expansion of `#[derive(bus::Event)]` on `input`: the `Event` impl, or the errors.
///
/// On errors the impl is still generated, with the name if it was valid and an empty one
/// otherwise, so that the user sees the mistake in the attribute and not also "`UserCreated`
/// is not a `bus::Event`" wherever the type is published or listened to (thiserror's
/// fallback). The build fails on the errors either way.
pub(crate) fn derive(input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(error) => return error.to_compile_error(),
    };
    let mut errors = Errors::default();
    let args = event_args(&input.attrs, &mut errors);
    if let (Some(flag), false) = (args.distributed, input.generics.params.is_empty()) {
        errors.push(syn::Error::new(
            flag,
            "a generic event type cannot be made distributed by its derive: its parameters are \
             not known here; remove `distributed` and name each type that travels with \
             `EventBusBuilder::distributed::<Type<..>>()`",
        ));
    }
    let implementation = implementation(&input, &args);
    match errors.finish_with(Ok(())) {
        Ok(()) => implementation,
        Err(error) => {
            let error = error.to_compile_error();
            quote!(#implementation #error)
        }
    }
}

/// `impl bus::Event for T { const NAME: &'static str = ".."; }`.
///
/// A generic type is an event for the parameters that make it `Send + Sync + 'static`: the
/// impl says so in its `where` clause rather than requiring it of every parameter.
fn implementation(input: &DeriveInput, args: &EventArgs) -> TokenStream {
    let ident = &input.ident;
    let mut generics = input.generics.clone();
    if !generics.params.is_empty() {
        let bound: WherePredicate =
            parse_quote!(Self: ::core::marker::Send + ::core::marker::Sync + 'static);
        generics.make_where_clause().predicates.push(bound);
    }
    let (impl_generics, type_generics, where_clause) = generics.split_for_impl();
    let bus = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::bus),
    };
    let name = match &args.name {
        Some(name) => name.clone(),
        None => LitStr::new("", Span::call_site()),
    };
    // A type that says it is distributed crosses the wire on a bus with a transport: its codec
    // is submitted at link time. A type that is not serde is reported at the flag.
    let codec = args
        .distributed
        .filter(|_| input.generics.params.is_empty())
        .map(|flag| {
            // The type named at the flag, so that a type that is not serde is reported there.
            let mut ty = ident.clone();
            ty.set_span(flag);
            let codec = quote_spanned!(flag=> #bus::__private::distributed_codec::<#ty>);
            quote! {
                #[doc(hidden)]
                const _: () = {
                    #bus::__private::inventory::submit! {
                        #bus::__private::CodecEntry::new(#codec)
                    }
                };
            }
        });
    quote! {
        #[automatically_derived]
        impl #impl_generics #bus::__private::Event for #ident #type_generics #where_clause {
            const NAME: &'static str = #name;
        }
        #codec
    }
}

/// Reads every `#[event(..)]` attribute among `attrs`, recording each mistake in `errors`.
fn event_args(attrs: &[Attribute], errors: &mut Errors) -> EventArgs {
    let mut args = EventArgs::default();
    // `name` given, even if wrong: its own error is enough.
    let mut named = false;
    let mut has_crate = false;
    for attr in attrs.iter().filter(|attr| attr.path().is_ident("event")) {
        let list = match &attr.meta {
            Meta::List(list) => list,
            Meta::Path(_) | Meta::NameValue(_) => {
                errors.spanned(
                    attr,
                    "`#[event]` takes the event name in parentheses: write \
                     `#[event(name = \"user.created\")]`",
                );
                continue;
            }
        };
        let parsed =
            match Punctuated::<Arg, Token![,]>::parse_terminated.parse2(list.tokens.clone()) {
                Ok(parsed) => parsed,
                Err(error) => {
                    errors.push(error);
                    continue;
                }
            };
        for arg in parsed {
            let (key, value) = match arg {
                Arg::Flag(key) if key == "distributed" => {
                    if args.distributed.replace(key.span()).is_some() {
                        errors.spanned(&key, "duplicate `distributed`");
                    }
                    continue;
                }
                Arg::Option { key, value } => (key.unraw(), Some(value)),
                Arg::Flag(key) => (key.unraw(), None),
                Arg::Positional(expr) => {
                    let example = match &expr {
                        Expr::Lit(ExprLit {
                            lit: Lit::Str(lit), ..
                        }) => format!("{:?}", lit.value()),
                        _ => "\"user.created\"".to_owned(),
                    };
                    errors.spanned(
                        expr,
                        format!(
                            "`#[event]` takes the event name as `name = \"...\"`: write \
                             `#[event(name = {example})]`"
                        ),
                    );
                    continue;
                }
            };
            let seen = match key.to_string().as_str() {
                "name" => &mut named,
                "crate" => &mut has_crate,
                "distributed" => {
                    errors.spanned(
                        &key,
                        "`distributed` is a flag and takes no value: write \
                         `#[event(name = \"..\", distributed)]`",
                    );
                    continue;
                }
                other => {
                    errors.spanned(
                        &key,
                        format!(
                            "unknown key `{other}` in `#[event(..)]`, expected `name`, \
                             `distributed` or `crate`"
                        ),
                    );
                    continue;
                }
            };
            if std::mem::replace(seen, true) {
                errors.spanned(
                    &key,
                    format!("duplicate `{key}`; an event type has one `#[event({key} = ..)]`"),
                );
                continue;
            }
            let Some(value) = value else {
                let example = if key == "name" {
                    "`name = \"user.created\"`"
                } else {
                    "`crate = \"bus\"`"
                };
                errors.spanned(&key, format!("`{key}` needs a value; write {example}"));
                continue;
            };
            if key == "name" {
                args.name = event_name(&value).map_err(|error| errors.push(error)).ok();
            } else {
                args.krate = crate_path(&value, errors);
            }
        }
    }
    // After another mistake in `#[event(..)]` (a misspelt `name`, say), that one is enough.
    if !named && errors.is_empty() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`#[derive(bus::Event)]` needs the event name; add `#[event(name = \"user.created\")]` \
             under the derive",
        ));
    }
    args
}

/// The value of `name = ..`, checked against the event-name rules: a concrete name, as emitted,
/// so no `*` or `>` wildcards.
fn event_name(value: &Expr) -> syn::Result<LitStr> {
    parse::checked_name(
        value,
        "`name` must be a string literal such as `name = \"user.created\"`",
        |name| bus_names::check_event_name(name).map_err(|problem| problem.message()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot;

    /// The impl generated for `input`, checked to be one `impl` item, with nothing else.
    #[track_caller]
    fn implementation_of(input: TokenStream) -> syn::ItemImpl {
        let output = derive(input);
        let file = syn::parse2::<syn::File>(output.clone())
            .unwrap_or_else(|error| panic!("{error}: {output}"));
        match file.items.as_slice() {
            [syn::Item::Impl(item)] => item.clone(),
            _ => panic!("expected one impl, got: {output}"),
        }
    }

    #[test]
    fn submits_a_codec_for_a_distributed_type_only() {
        let output = derive(quote! {
            #[event(name = "orders.placed", distributed)]
            struct OrderPlaced { id: u64 }
        });
        let file = syn::parse2::<syn::File>(output.clone()).unwrap();
        let [syn::Item::Impl(_), syn::Item::Const(codec)] = file.items.as_slice() else {
            panic!("expected the impl and a codec block, got: {output}");
        };
        let codec = codec.to_token_stream().to_string();
        assert!(
            codec.contains(
                "CodecEntry :: new (:: bus :: __private :: distributed_codec :: < OrderPlaced >)"
            ),
            "{codec}"
        );
        let generic = messages_of_derive(quote! {
            #[event(name = "a.b", distributed)]
            struct Page<T> { items: Vec<T> }
        });
        assert!(
            generic[0].contains("a generic event type cannot be made distributed"),
            "{generic:?}"
        );
    }

    /// The messages of the errors of the whole derive of `input`.
    fn messages_of_derive(input: TokenStream) -> Vec<String> {
        let output = derive(input);
        output
            .into_iter()
            .filter_map(|tree| match tree {
                proc_macro2::TokenTree::Group(group) => Some(group.stream().to_string()),
                _ => None,
            })
            .filter(|text| text.starts_with('"'))
            .collect()
    }

    /// The messages of the errors `input` is reported with.
    fn messages(input: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        match syn::parse2::<DeriveInput>(input) {
            Ok(input) => drop(event_args(&input.attrs, &mut errors)),
            Err(error) => errors.push(error),
        }
        match errors.finish_with(Ok(())) {
            Ok(()) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    #[test]
    fn implements_event_with_the_name() {
        let item = implementation_of(quote! {
            #[derive(Debug, bus::Event)]
            #[event(name = "user.created")]
            pub struct UserCreated { name: String }
        });
        let text = item.to_token_stream().to_string();
        assert_eq!(
            text,
            "# [automatically_derived] impl :: bus :: __private :: Event for UserCreated { \
             const NAME : & 'static str = \"user.created\" ; }"
        );
    }

    #[test]
    fn implements_event_for_enums_unions_and_generic_types() {
        for input in [
            quote! { #[event(name = "a.b")] enum Change { Added(u32), Removed } },
            quote! { #[event(name = "a.b")] union Bits { int: u32, float: f32 } },
            quote! { #[event(name = "a.b")] struct Unit; },
            quote! { #[event(name = "a.b")] struct Tuple(u8, String); },
        ] {
            let item = implementation_of(input);
            assert!(item.generics.params.is_empty());
            assert!(item.generics.where_clause.is_none());
        }
        let item = implementation_of(quote! {
            #[event(name = "a.b")]
            struct Wrapper<'a, T: Clone, const N: usize> where T: Default { inner: &'a [T; N] }
        });
        assert_eq!(
            item.to_token_stream().to_string(),
            "# [automatically_derived] \
             impl < 'a , T : Clone , const N : usize > :: bus :: __private :: Event for Wrapper < 'a , T , N > \
             where T : Default , Self : :: core :: marker :: Send + :: core :: marker :: Sync \
             + 'static { const NAME : & 'static str = \"a.b\" ; }"
        );
    }

    #[test]
    fn reads_the_name_and_the_crate_from_any_event_attribute() {
        for input in [
            quote! { #[event(name = "a.b", crate = "renamed")] struct E; },
            quote! { #[event(crate = "renamed", name = r"a.b",)] struct E; },
            quote! { #[event(crate = "renamed")] #[doc = "E"] #[event(name = "a.b")] struct E; },
        ] {
            let text = implementation_of(input).to_token_stream().to_string();
            assert!(
                text.contains(
                    "impl renamed :: __private :: Event for E { const NAME : & 'static str = \"a.b\" ;"
                ),
                "{text}"
            );
        }
    }

    /// Event names follow the runtime's event-name rules, with the runtime's messages: a
    /// pattern is not a name.
    #[test]
    fn checks_names_with_the_runtime_table() {
        let all = bus_names::CASES.iter().chain(bus_names::PATTERN_CASES);
        for &(name, _) in all {
            let messages = messages(quote! { #[event(name = #name)] struct E; });
            match bus_names::check_event_name(name) {
                Ok(()) => assert_eq!(messages, Vec::<String>::new(), "{name:?}"),
                Err(problem) => assert_eq!(messages, [problem.message()], "{name:?}"),
            }
        }
        let messages = messages(quote! { #[event(name = "orders.*")] struct E; });
        assert_eq!(
            messages,
            [
                "event name has a wildcard at byte 7; an emitted event needs a concrete name such \
              as `orders.created`"
            ]
        );
    }

    #[test]
    fn reports_each_mistake_in_the_attribute() {
        #[rustfmt::skip]
        let cases = [
            (quote!(), "`#[derive(bus::Event)]` needs the event name; add `#[event(name = \"user.created\")]`"),
            (quote!(#[serde(name = "a.b")]), "needs the event name"),
            (quote!(#[event]), "`#[event]` takes the event name in parentheses: write `#[event(name = \"user.created\")]`"),
            (quote!(#[event = "a.b"]), "`#[event]` takes the event name in parentheses"),
            (quote!(#[event()]), "needs the event name"),
            (quote!(#[event("a.b")]), "`#[event]` takes the event name as `name = \"...\"`: write `#[event(name = \"a.b\")]`"),
            (quote!(#[event(A_B)]), "write `#[event(name = \"user.created\")]`"),
            (quote!(#[event(name)]), "`name` needs a value; write `name = \"user.created\"`"),
            (quote!(#[event(name = "a.b", crate)]), "`crate` needs a value; write `crate = \"bus\"`"),
            (quote!(#[event(nam = "a.b")]), "unknown key `nam` in `#[event(..)]`, expected `name`, `distributed` or `crate`"),
            (quote!(#[event(name = "a.b", distributed = true)]), "`distributed` is a flag"),
            (quote!(#[event(name = "a.b", distributed, distributed)]), "duplicate `distributed`"),
            (quote!(#[event(name = "a.b", once)]), "unknown key `once`"),
            (quote!(#[event(name = "a.b", name = "c.d")]), "duplicate `name`; an event type has one `#[event(name = ..)]`"),
            (quote!(#[event(name = "a.b")] #[event(name = "a.b")]), "duplicate `name`"),
            (quote!(#[event(name = "a.b", crate = "bus", crate = "bus")]), "duplicate `crate`"),
            (quote!(#[event(name = a.b)]), "`name` must be a string literal such as `name = \"user.created\"`"),
            (quote!(#[event(name = 42)]), "`name` must be a string literal"),
            (quote!(#[event(name = "")]), "event name must not be empty"),
            (quote!(#[event(name = "user created")]), "event name has the character ' ' at byte 4"),
            (quote!(#[event(name = "orders.>")]), "event name has a wildcard at byte 7"),
            (quote!(#[event(name = "a.b", crate = "not a path")]), "`crate` must be the path of the `bus` crate"),
            (quote!(#[event(name = "a.b" "c.d")]), "expected `,`"),
        ];
        for (attrs, expected) in cases {
            let messages = messages(quote! { #attrs struct UserCreated; });
            assert_eq!(messages.len(), 1, "{attrs}: {messages:#?}");
            assert!(messages[0].contains(expected), "{attrs}: {messages:#?}");
        }
    }

    #[test]
    fn reports_every_mistake_at_once() {
        let messages = messages(quote! {
            #[event(nam = "a.b", name = "a b")]
            #[event(crate = 1)]
            struct E;
        });
        let expected = [
            "unknown key `nam`",
            "event name has the character",
            "`crate` must be",
        ];
        crate::diagnostics::assert_messages(&messages, &expected);
    }

    /// A mistake fails the build with its message, and the impl is still there so that no
    /// use of the type adds an error of its own.
    #[test]
    fn keeps_an_impl_beside_the_errors() {
        for (input, name) in [
            (quote! { struct E; }, "\"\""),
            (quote! { #[event(name = "a b")] struct E; }, "\"\""),
            (
                quote! { #[event(name = "a.b", typo = 1)] struct E; },
                "\"a.b\"",
            ),
        ] {
            let output = derive(input).to_string();
            let implementation = format!(
                "impl :: bus :: __private :: Event for E {{ const NAME : & 'static str = {name} ; }}"
            );
            assert!(output.contains(&implementation), "{output}");
            assert!(output.contains("compile_error"), "{output}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        for input in [
            quote!(),
            quote!(
                fn f() {}
            ),
            quote!(struct),
        ] {
            assert!(derive(input).to_string().contains("compile_error"));
        }
    }

    /// The expansion that the derive's docs show. Regenerate with
    /// `BUS_OVERWRITE_SNAPSHOTS=1 cargo test -p bus-macros`, then review the diff.
    #[test]
    fn expansion_snapshot() {
        let output = derive(quote! {
            #[derive(Debug)]
            #[event(name = "user.created")]
            struct UserCreated {
                name: String,
            }
        });
        let file: syn::File = syn::parse2(output).expect("the expansion parses as a file");
        snapshot::assert_matches("derive_event.expanded.rs", &prettyplease::unparse(&file));
    }
}
