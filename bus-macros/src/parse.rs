//! Reads `#[bus::listener(..)]`: the attribute's arguments and the annotated fn's signature.
//!
//! Every check records its error and carries on, so one build reports every mistake; the
//! expansion only starts when there are none.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::{
    Attribute, Expr, ExprLit, FnArg, GenericArgument, GenericParam, Generics, Ident, Item,
    Lifetime, Lit, LitStr, Path, PathArguments, ReturnType, Signature, Token, Type, TypePath,
    Visibility, braced,
};

use crate::diagnostics::{Errors, both};

/// Everything the expansion needs to know about one `#[bus::listener]` fn.
pub(crate) struct Listener {
    /// The event name or pattern (`orders.*`, `orders.>`), checked against the pattern rules;
    /// `None` when the attribute names no event and the name is the event type's
    /// `Event::NAME`.
    pub(crate) name: Option<LitStr>,
    /// The path of the `bus` crate from `crate = "..."`; `None` for `::bus`.
    pub(crate) krate: Option<Path>,
    /// `once`: the listener takes the first matching event only.
    pub(crate) once: bool,
    /// The delivery policy options.
    pub(crate) policy: PolicyOptions,
    /// The user's fn.
    pub(crate) ident: Ident,
    /// The type of events the fn handles: `E` for a fn taking `&E`, `Arc<E>` or `E`.
    pub(crate) event: Type,
    /// How the fn takes the event.
    pub(crate) takes: Takes,
    /// The first and the last token of the argument's type, where a missing `Clone` or a
    /// missing `Event` impl is reported.
    pub(crate) arg_span: (Span, Span),
    /// The first and the last token of the return type (the fn name when there is none), where
    /// a return type that is not a listener output is reported.
    pub(crate) output_span: (Span, Span),
    /// How the fn takes the event's envelope, its optional second argument ([`Takes::Ref`]
    /// for `&Envelope`, [`Takes::Value`] for `Envelope`), and the span of its type.
    pub(crate) envelope: Option<(Takes, Span)>,
}

/// How a listener takes its event `E`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Takes {
    /// `&E`: borrowed from the shared `Arc<E>`.
    Ref,
    /// `Arc<E>`: the shared `Arc<E>` itself.
    Arc,
    /// `E`: a clone of the event.
    Value,
}

/// The policy options of the attribute, checked: `None` where an option is not given, which
/// leaves the runtime's default.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct PolicyOptions {
    /// `concurrency = N`, at least 1.
    pub(crate) concurrency: Option<usize>,
    /// `timeout = "5s"`, longer than zero.
    pub(crate) timeout: Option<Duration>,
    /// `retry = N`.
    pub(crate) retry: Option<u32>,
    /// `backoff = "100ms"`, only with `retry` of at least 1.
    pub(crate) backoff: Option<Duration>,
    /// `group = false` or `group = "name"`: who shares the events on a distributed bus.
    pub(crate) group: Option<GroupOption>,
}

/// The `group` option.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum GroupOption {
    /// `group = false`: every instance gets every event.
    Ungrouped,
    /// `group = "name"`: the group of that name.
    Named(String),
}

impl PolicyOptions {
    /// `true` when no option is given: the listener keeps the default policy.
    pub(crate) fn is_empty(&self) -> bool {
        *self == PolicyOptions::default()
    }
}

/// The attribute's arguments: `"event.name"` (or a pattern), if given, and options.
struct Args {
    name: Option<LitStr>,
    krate: Option<Path>,
    once: bool,
    policy: PolicyOptions,
}

/// The fn's signature, as far as the expansion needs it.
struct ListenerFn {
    ident: Ident,
    event: Type,
    takes: Takes,
    arg_span: (Span, Span),
    output_span: (Span, Span),
    envelope: Option<(Takes, Span)>,
}

/// Reads the attribute's arguments `args` and the annotated `item`, with every error found in
/// either.
pub(crate) fn listener(args: TokenStream, item: TokenStream) -> syn::Result<Listener> {
    let (args, function) = both(parse_args(args), parse_fn(item))?;
    Ok(Listener {
        name: args.name,
        krate: args.krate,
        once: args.once,
        policy: args.policy,
        ident: function.ident,
        event: function.event,
        takes: function.takes,
        arg_span: function.arg_span,
        output_span: function.output_span,
        envelope: function.envelope,
    })
}

/// Every option the attribute takes, in the order error messages list them.
const OPTIONS: [&str; 7] = [
    "once",
    "concurrency",
    "timeout",
    "retry",
    "backoff",
    "group",
    "crate",
];

/// One comma-separated argument of the attribute (or of `#[event(..)]`), before it is checked.
pub(crate) enum Arg {
    /// An argument without a key: the event name, if it is a string literal.
    Positional(Expr),
    /// A bare option such as `once`.
    Flag(Ident),
    /// `key = value`.
    Option { key: Ident, value: Expr },
}

impl Parse for Arg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        // `Ident::parse_any` accepts keywords, so that `crate = ".."` reads like `foo = ..`.
        if input.peek(Ident::peek_any) && input.peek2(Token![=]) {
            let key = Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            let value = input.parse()?;
            return Ok(Arg::Option { key, value });
        }
        if is_flag(input) {
            return Ident::parse_any(input).map(Arg::Flag);
        }
        input.parse().map(Arg::Positional)
    }
}

/// `true` when the next argument is a lone identifier that reads as an option: `once`, or a
/// misspelling of it. An identifier without a lower-case letter, such as `USER_CREATED`, reads
/// as a constant given for the event name, and is reported as such.
fn is_flag(input: ParseStream<'_>) -> bool {
    let fork = input.fork();
    match Ident::parse_any(&fork) {
        Ok(ident) => {
            let alone = fork.is_empty() || fork.peek(Token![,]);
            let name = ident.unraw().to_string();
            alone && name.chars().any(|ch| ch.is_ascii_lowercase())
        }
        Err(_) => false,
    }
}

fn parse_args(tokens: TokenStream) -> syn::Result<Args> {
    let parsed = Punctuated::<Arg, Token![,]>::parse_terminated.parse2(tokens)?;
    // Every error is recorded as it is met, so they are reported in source order.
    let mut errors = Errors::default();
    let mut args = Args {
        name: None,
        krate: None,
        once: false,
        policy: PolicyOptions::default(),
    };
    let mut named = false;
    let mut seen: Vec<String> = Vec::new();
    let mut backoff = None;
    for arg in parsed {
        let (key, value) = match arg {
            Arg::Positional(expr) if named => {
                errors.spanned(
                    expr,
                    "`#[bus::listener]` takes one event name; write one listener per event",
                );
                continue;
            }
            Arg::Positional(expr) => {
                named = true;
                args.name = event_name(&expr).map_err(|error| errors.push(error)).ok();
                continue;
            }
            Arg::Flag(key) => (key.unraw(), None),
            Arg::Option { key, value } => (key.unraw(), Some(value)),
        };
        let name = key.to_string();
        if OPTIONS.contains(&name.as_str()) {
            if seen.contains(&name) {
                errors.spanned(&key, format!("duplicate option `{name}`"));
                continue;
            }
            seen.push(name);
        }
        if key == "backoff" {
            backoff = Some(key.clone());
        }
        option(&mut args, &key, value, &mut errors);
    }
    // Checked once every option is read, as `retry` may come after `backoff`.
    if let Some(backoff) = backoff {
        let retry_given = seen.iter().any(|seen| seen == "retry");
        match args.policy.retry {
            Some(retries) if retries > 0 => {}
            // `retry` was given, but wrong: that is the error to fix first.
            None if retry_given => {}
            retries => errors.spanned(
                backoff,
                format!(
                    "`backoff` is the delay before a retry, but this listener {}; add \
                     `retry = 3` (or how many retries it should make), or remove `backoff`",
                    match retries {
                        Some(_) => "has `retry = 0`",
                        None => "does not retry",
                    }
                ),
            ),
        }
    }
    errors.finish_with(Ok(args))
}

/// Reads the option `key`, given with `value` or alone, into `args`.
fn option(args: &mut Args, key: &Ident, value: Option<Expr>, errors: &mut Errors) {
    let name = key.to_string();
    let policy = &mut args.policy;
    match (name.as_str(), value) {
        ("once", None) => args.once = true,
        ("once", Some(value)) => errors.spanned(
            quote!(#key = #value),
            "`once` takes no value; write `once` to make this a listener for one event, or \
             remove it",
        ),
        (known, None) if OPTIONS.contains(&known) => errors.spanned(
            key,
            format!("option `{name}` needs a value; write {}", example(&name)),
        ),
        ("crate", Some(value)) => args.krate = crate_path(&value, errors),
        ("concurrency", Some(value)) => {
            policy.concurrency = integer(key, &value, usize::MAX, errors);
            if policy.concurrency == Some(0) {
                policy.concurrency = None;
                errors.spanned(
                    &value,
                    "`concurrency` must be at least 1: it is how many deliveries of this \
                     listener may run at once (`1` runs them one at a time, in emit order); \
                     remove the option for no limit",
                );
            }
        }
        ("timeout", Some(value)) => {
            policy.timeout = duration(key, &value, errors);
            if policy.timeout == Some(Duration::ZERO) {
                policy.timeout = None;
                errors.spanned(
                    &value,
                    "`timeout` must be longer than zero: every delivery would time out; remove \
                     the option for no timeout",
                );
            }
        }
        ("retry", Some(value)) => policy.retry = integer(key, &value, u32::MAX, errors),
        ("backoff", Some(value)) => policy.backoff = duration(key, &value, errors),
        ("group", Some(value)) => policy.group = group(&value, errors),
        _ => {
            let expected: Vec<String> =
                OPTIONS.iter().map(|option| format!("`{option}`")).collect();
            errors.spanned(
                key,
                format!(
                    "unknown option `{name}`, expected one of: {}",
                    expected.join(", ")
                ),
            );
        }
    }
}

/// How an option with a value is written, for error messages.
fn example(option: &str) -> &'static str {
    match option {
        "concurrency" => "`concurrency = 1`",
        "timeout" => "`timeout = \"5s\"`",
        "retry" => "`retry = 3`",
        "backoff" => "`backoff = \"100ms\"`",
        "group" => "`group = false` or `group = \"name\"`",
        _ => "`crate = \"bus\"`",
    }
}

/// The value of `group = ..`: `false`, or a group name (a non-empty string without
/// whitespace); `None` when it is neither (the error is recorded).
fn group(value: &Expr, errors: &mut Errors) -> Option<GroupOption> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(flag),
            ..
        }) if !flag.value => Some(GroupOption::Ungrouped),
        Expr::Lit(ExprLit {
            lit: Lit::Bool(_), ..
        }) => {
            errors.spanned(
                value,
                "`group = true` is the default (the instances of a service share the events); \
                 remove it, or write `group = false` for every instance to get every event",
            );
            None
        }
        Expr::Lit(ExprLit {
            lit: Lit::Str(name),
            ..
        }) => {
            let text = name.value();
            if text.is_empty() || text.chars().any(char::is_whitespace) {
                errors.spanned(
                    value,
                    "a group name must not be empty or hold whitespace, such as \
                     `group = \"billing.orders\"`",
                );
                return None;
            }
            Some(GroupOption::Named(text))
        }
        _ => {
            errors.spanned(
                value,
                "`group` must be `false` (every instance gets every event) or a string literal \
                 naming the group, such as `group = \"billing.orders\"`",
            );
            None
        }
    }
}

/// The value of an integer option such as `retry = 3`, at most `max`; `None` when it is not
/// one (the error is recorded).
fn integer<T>(key: &Ident, value: &Expr, max: T, errors: &mut Errors) -> Option<T>
where
    T: std::str::FromStr + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let option = key.to_string();
    let lit = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(lit), ..
        }) => lit,
        // `retry = "3"`: the number is right, the quotes are not.
        Expr::Lit(ExprLit {
            lit: Lit::Str(text),
            ..
        }) if text.value().parse::<T>().is_ok() => {
            let number = text.value();
            errors.spanned(
                value,
                format!(
                    "`{option}` must be an integer literal, not a string; remove the quotes: \
                     `{option} = {number}`"
                ),
            );
            return None;
        }
        _ => {
            errors.spanned(
                value,
                format!(
                    "`{option}` must be an integer literal, such as {}",
                    example(&option)
                ),
            );
            return None;
        }
    };
    let parsed = lit.base10_parse::<T>();
    if parsed.is_err() {
        errors.spanned(lit, format!("`{option}` must be at most {max}"));
    }
    parsed.ok()
}

/// The value of a duration option such as `timeout = "5s"`, parsed as `humantime` parses
/// durations; `None` when it is not one (the error is recorded).
fn duration(key: &Ident, value: &Expr, errors: &mut Errors) -> Option<Duration> {
    let option = key.to_string();
    let lit = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit,
        // `timeout = 5`: the number needs its unit, in a string.
        Expr::Lit(ExprLit {
            lit: Lit::Int(number),
            ..
        }) => {
            let number = number.base10_digits();
            errors.spanned(
                value,
                format!(
                    "`{option}` must be a duration in a string, with its unit: write \
                     `{option} = \"{number}s\"` or `{option} = \"{number}ms\"`"
                ),
            );
            return None;
        }
        _ => {
            errors.spanned(
                value,
                format!(
                    "`{option}` must be a duration in a string, such as {}",
                    example(&option)
                ),
            );
            return None;
        }
    };
    let text = lit.value();
    match humantime::parse_duration(&text) {
        Ok(duration) => Some(duration),
        Err(error) => {
            errors.spanned(
                lit,
                format!(
                    "invalid duration {text:?} for `{option}`: {error}; write a number and a \
                     unit, such as `\"5s\"`, `\"100ms\"` or `\"1m 30s\"`"
                ),
            );
            None
        }
    }
}

/// The event name `expr`, checked against the pattern rules: an event name, or a pattern with
/// `*` and `>` wildcards, exactly as the runtime parses listener patterns.
fn event_name(expr: &Expr) -> syn::Result<LitStr> {
    checked_name(
        expr,
        "event name must be a string literal such as `\"user.created\"`",
        |name| bus_names::check_pattern(name).map_err(|problem| problem.message()),
    )
}

/// The string literal `expr`, rebuilt from its value so that the expansion shows `"a.b"` even
/// for `r"a.b"`, once `check` accepts it; errors on the literal (or on `expr` when it is not
/// a string literal, with `not_a_string`).
pub(crate) fn checked_name(
    expr: &Expr,
    not_a_string: &str,
    check: impl FnOnce(&str) -> Result<(), String>,
) -> syn::Result<LitStr> {
    let Expr::Lit(ExprLit {
        lit: Lit::Str(lit), ..
    }) = expr
    else {
        return Err(syn::Error::new_spanned(expr, not_a_string));
    };
    let name = lit.value();
    match check(&name) {
        Ok(()) => Ok(LitStr::new(&name, lit.span())),
        Err(message) => Err(syn::Error::new_spanned(lit, message)),
    }
}

/// The path in `crate = "path"`; `None` when it is not one (the error is recorded).
pub(crate) fn crate_path(value: &Expr, errors: &mut Errors) -> Option<Path> {
    let path = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) => lit.parse_with(Path::parse_mod_style).ok(),
        _ => None,
    };
    if path.is_none() {
        errors.spanned(
            value,
            "`crate` must be the path of the `bus` crate, in a string: write `crate = \"bus\"` \
             or `crate = \"::my_reexport::bus\"`",
        );
    }
    path
}

fn parse_fn(item: TokenStream) -> syn::Result<ListenerFn> {
    let item = match syn::parse2::<FnHead>(item.clone()) {
        Ok(item) => item,
        Err(error) => {
            return Err(match syn::parse2::<Item>(item) {
                Ok(other) => syn::Error::new_spanned(
                    item_head(&other),
                    "`#[bus::listener]` can only be applied to an `async fn`; write \
                     `async fn name(event: &Event)`",
                ),
                Err(_) => error,
            });
        }
    };
    let sig = &item.sig;
    let mut errors = Errors::default();
    check_header(sig, &mut errors);
    let event = event_arg(sig, &mut errors);
    // After a `self`, which is reported alone, the other arguments are not checked.
    let envelope = event
        .is_ok()
        .then(|| envelope_arg(sig, &mut errors))
        .flatten();
    let output_span = match &sig.output {
        ReturnType::Default => (sig.ident.span(), sig.ident.span()),
        ReturnType::Type(_, ty) => span_range(ty),
    };
    let function = event.map(|(event, takes, arg_span)| ListenerFn {
        ident: sig.ident.clone(),
        event,
        takes,
        arg_span,
        output_span,
        envelope,
    });
    errors.finish_with(function)
}

/// A fn item, read up to its signature. The body is the user's code, not ours to check: left
/// as tokens, a syntax error in it is reported once, by rustc (tokio parses fns the same way).
struct FnHead {
    sig: Signature,
}

impl Parse for FnHead {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        input.call(Attribute::parse_outer)?;
        input.parse::<Visibility>()?;
        let sig = input.parse()?;
        let body;
        braced!(body in input);
        body.parse::<TokenStream>()?;
        Ok(FnHead { sig })
    }
}

/// Checks everything in the signature but its arguments and return type.
fn check_header(sig: &Signature, errors: &mut Errors) {
    // rustc itself rejects `const async fn`: report `const` only when `async` is missing too.
    if let (Some(constness), None) = (sig.constness, sig.asyncness) {
        errors.spanned(
            constness,
            "a listener cannot be a `const fn`; remove `const`",
        );
    }
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "`#[bus::listener]` requires an `async fn`; write `async fn name(event: &Event)`",
        );
    }
    if let Some(unsafety) = sig.unsafety {
        errors.spanned(
            unsafety,
            "a listener cannot be an `unsafe fn`; remove `unsafe` and use an `unsafe` block in \
             the body",
        );
    }
    if let Some(abi) = &sig.abi {
        errors.spanned(abi, "a listener cannot have an `extern` ABI; remove it");
    }
    let generics = &sig.generics;
    if generics.params.is_empty() {
        if let Some(where_clause) = &generics.where_clause {
            errors.spanned(
                where_clause,
                "a listener cannot have a `where` clause; remove it",
            );
        }
    } else if generics
        .params
        .iter()
        .all(|param| matches!(param, GenericParam::Lifetime(_)))
    {
        errors.spanned(
            generics,
            "a listener cannot have lifetime parameters; take the event as `&Event`, without a \
             lifetime",
        );
    } else {
        errors.spanned(
            generics,
            "a listener cannot be generic; name the concrete event type, such as \
             `event: &UserCreated`",
        );
    }
    if let Some(variadic) = &sig.variadic {
        errors.spanned(
            variadic,
            "a listener takes the event as its one argument; remove `...`",
        );
    }
}

/// The event argument: the event type, how the fn takes it, and the span of its type.
///
/// Mistakes that leave an event type to work with are recorded in `errors`, so that they are
/// reported along with the others; the rest are returned.
fn event_arg(sig: &Signature, errors: &mut Errors) -> syn::Result<(Type, Takes, (Span, Span))> {
    let arg = match sig.inputs.first() {
        Some(FnArg::Typed(arg)) => arg,
        // A method's other arguments would be fine in a free fn: report `self` alone.
        Some(FnArg::Receiver(receiver)) => {
            return Err(syn::Error::new_spanned(
                receiver,
                "a listener cannot take `self`; write a free `async fn` taking the event, \
                 outside the `impl` block",
            ));
        }
        None => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "a listener takes the event as its one argument; write `(event: &Event)`",
            ));
        }
    };
    let (event, takes) = event_type(&arg.ty, &sig.generics, errors);
    check_nameable(&event, errors);
    Ok((event, takes, span_range(&arg.ty)))
}

/// The optional second argument, the envelope: `&Envelope` or `Envelope` (any path ending in
/// `Envelope`, such as `bus::Envelope`; the compiler checks it is the bus's). Anything else,
/// and any argument after it, is reported.
fn envelope_arg(sig: &Signature, errors: &mut Errors) -> Option<(Takes, Span)> {
    const MORE: &str = "a listener takes the event and, optionally, its envelope \
                        (`envelope: &bus::Envelope`); remove the others (register a closure \
                        with `EventBus::add_listener` to give a listener state)";
    if sig.inputs.len() > 2 {
        let extra = sig.inputs.iter().skip(2);
        errors.spanned(quote!(#(#extra)*), MORE);
    }
    let arg = sig.inputs.iter().nth(1)?;
    let FnArg::Typed(typed) = arg else {
        errors.spanned(arg, MORE);
        return None;
    };
    let is_envelope = |ty: &Type| {
        matches!(ty, Type::Path(path) if path.qself.is_none()
        && path.path.segments.last().is_some_and(|last| {
            last.ident == "Envelope" && matches!(last.arguments, PathArguments::None)
        }))
    };
    let takes = match &*typed.ty {
        Type::Reference(reference)
            if reference.mutability.is_none() && is_envelope(&reference.elem) =>
        {
            Takes::Ref
        }
        ty if is_envelope(ty) => Takes::Value,
        _ => {
            errors.spanned(arg, MORE);
            return None;
        }
    };
    Some((takes, span_range(&typed.ty).0))
}

/// The event type `E` of an argument of type `ty`, and how it takes `E`.
fn event_type(ty: &Type, generics: &Generics, errors: &mut Errors) -> (Type, Takes) {
    match ty {
        Type::Group(group) => event_type(&group.elem, generics, errors),
        Type::Paren(paren) => event_type(&paren.elem, generics, errors),
        Type::Reference(reference) => {
            let lifetime = reference.lifetime.as_ref();
            // A lifetime parameter of the fn is reported once, where it is declared.
            let declared =
                |lifetime: &Lifetime| generics.lifetimes().any(|p| p.lifetime == *lifetime);
            if let Some(lifetime) = lifetime.filter(|lifetime| !declared(lifetime)) {
                errors.spanned(
                    lifetime,
                    "the event is borrowed for the listener's call only; remove the lifetime \
                     and write `&Event`",
                );
            }
            if let Some(mutability) = reference.mutability {
                let and = reference.and_token;
                errors.spanned(
                    quote!(#and #mutability),
                    "an event is shared by all its listeners and cannot be borrowed mutably; \
                     take `&Event`, or `Event` to get a clone of your own",
                );
            }
            ((*reference.elem).clone(), Takes::Ref)
        }
        Type::Path(path) => match arc_inner(path) {
            Some(inner) => (inner.clone(), Takes::Arc),
            None => (ty.clone(), Takes::Value),
        },
        _ => (ty.clone(), Takes::Value),
    }
}

/// `T` when `path` is `Arc<T>` (or `std::sync::Arc<T>`, or any path ending in `Arc<T>`).
fn arc_inner(path: &TypePath) -> Option<&Type> {
    let last = path.path.segments.last()?;
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match (last.ident == "Arc", args.args.len(), args.args.first()) {
        (true, 1, Some(GenericArgument::Type(inner))) => Some(inner),
        _ => None,
    }
}

/// Reports `impl Trait` anywhere in the event type: it makes the fn generic, and the bus needs
/// one concrete type to deliver.
fn check_nameable(ty: &Type, errors: &mut Errors) {
    match ty {
        Type::ImplTrait(impl_trait) => errors.spanned(
            impl_trait,
            "a listener cannot take `impl Trait`; name the concrete event type, such as \
             `event: &UserCreated`",
        ),
        Type::Array(array) => check_nameable(&array.elem, errors),
        Type::Group(group) => check_nameable(&group.elem, errors),
        Type::Paren(paren) => check_nameable(&paren.elem, errors),
        Type::Ptr(ptr) => check_nameable(&ptr.elem, errors),
        Type::Reference(reference) => check_nameable(&reference.elem, errors),
        Type::Slice(slice) => check_nameable(&slice.elem, errors),
        Type::Tuple(tuple) => tuple.elems.iter().for_each(|ty| check_nameable(ty, errors)),
        Type::Path(path) => {
            let args = path
                .path
                .segments
                .iter()
                .filter_map(|segment| match &segment.arguments {
                    PathArguments::AngleBracketed(args) => Some(&args.args),
                    _ => None,
                });
            for arg in args.flatten() {
                match arg {
                    GenericArgument::Type(ty) => check_nameable(ty, errors),
                    GenericArgument::AssocType(assoc) => check_nameable(&assoc.ty, errors),
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The span of the first and of the last token of `tokens`.
///
/// Generated code spanned from the first to the last makes rustc underline all of `tokens`
/// (a `Span::join` is nightly-only), as `syn::Error::new_spanned` does.
fn span_range(tokens: &impl ToTokens) -> (Span, Span) {
    let mut tokens = tokens.to_token_stream().into_iter();
    let first = tokens
        .next()
        .map_or_else(Span::call_site, |token| token.span());
    let last = tokens.last().map_or(first, |token| token.span());
    (first, last)
}

/// The tokens that name `item`, such as `struct Foo`: a whole struct underlined is noise.
fn item_head(item: &Item) -> TokenStream {
    match item {
        Item::Struct(item) => head(item.struct_token, &item.ident),
        Item::Enum(item) => head(item.enum_token, &item.ident),
        Item::Union(item) => head(item.union_token, &item.ident),
        Item::Trait(item) => head(item.trait_token, &item.ident),
        Item::Mod(item) => head(item.mod_token, &item.ident),
        Item::Impl(item) => head(item.impl_token, &item.self_ty),
        Item::Const(item) => head(item.const_token, &item.ident),
        Item::Static(item) => head(item.static_token, &item.ident),
        Item::Type(item) => head(item.type_token, &item.ident),
        other => other.to_token_stream(),
    }
}

fn head(keyword: impl ToTokens, name: impl ToTokens) -> TokenStream {
    quote!(#keyword #name)
}

#[cfg(test)]
mod tests {
    use quote::quote;

    use super::*;

    fn messages(args: TokenStream, item: TokenStream) -> Vec<String> {
        match listener(args, item) {
            Ok(_) => Vec::new(),
            Err(error) => error.into_iter().map(|error| error.to_string()).collect(),
        }
    }

    /// The one error of `args` and `item`.
    #[track_caller]
    fn error(args: TokenStream, item: TokenStream) -> String {
        let messages = messages(args, item);
        assert_eq!(
            messages.len(),
            1,
            "expected exactly one error: {messages:#?}"
        );
        messages.into_iter().next().unwrap_or_default()
    }

    #[track_caller]
    fn parses(args: TokenStream, item: TokenStream) -> Listener {
        match listener(args, item) {
            Ok(listener) => listener,
            Err(error) => panic!("expected no error, got: {error}"),
        }
    }

    fn tokens(tokens: &impl ToTokens) -> String {
        tokens.to_token_stream().to_string()
    }

    /// The event name the attribute gives `listener`.
    #[track_caller]
    fn name_of(listener: &Listener) -> String {
        listener.name.as_ref().expect("an event name").value()
    }

    #[test]
    fn reads_the_envelope_as_the_optional_second_argument() {
        #[rustfmt::skip]
        let cases = [
            (quote!(event: &E), None),
            (quote!(event: &E, envelope: &Envelope), Some(Takes::Ref)),
            (quote!(event: &E, envelope: &bus::Envelope), Some(Takes::Ref)),
            (quote!(event: Arc<E>, _: &::bus::Envelope), Some(Takes::Ref)),
            (quote!(event: E, envelope: Envelope), Some(Takes::Value)),
        ];
        for (args, takes) in cases {
            let listener = parses(quote!("a.b"), quote!(async fn f(#args) {}));
            assert_eq!(listener.envelope.map(|(takes, _)| takes), takes, "{args}");
            assert_eq!(tokens(&listener.event), "E", "{args}");
        }
    }

    #[test]
    fn reads_each_form_of_the_event_argument() {
        #[rustfmt::skip]
        let cases = [
            (quote!(event: &UserCreated), Takes::Ref, "UserCreated"),
            (quote!(event: &Vec<u8>), Takes::Ref, "Vec < u8 >"),
            (quote!(event: Arc<UserCreated>), Takes::Arc, "UserCreated"),
            (quote!(event: std::sync::Arc<UserCreated>), Takes::Arc, "UserCreated"),
            (quote!(event: ::std::sync::Arc<Vec<u8>>), Takes::Arc, "Vec < u8 >"),
            (quote!(event: UserCreated), Takes::Value, "UserCreated"),
            (quote!(event: Vec<u8>), Takes::Value, "Vec < u8 >"),
            (quote!(event: (u8, String)), Takes::Value, "(u8 , String)"),
            // Not `Arc<T>`: an `Arc` with an allocator is an event type of its own.
            (quote!(event: Arc<Data, Alloc>), Takes::Value, "Arc < Data , Alloc >"),
            (quote!(mut event: &UserCreated), Takes::Ref, "UserCreated"),
            (quote!(UserCreated { name }: UserCreated), Takes::Value, "UserCreated"),
            (quote!(_: &UserCreated), Takes::Ref, "UserCreated"),
        ];
        for (arg, takes, event) in cases {
            let listener = parses(
                quote!("user.created"),
                quote!(async fn on_user_created(#arg) {}),
            );
            assert_eq!(listener.takes, takes, "{arg}");
            assert_eq!(tokens(&listener.event), event, "{arg}");
            assert_eq!(listener.ident, "on_user_created");
            assert_eq!(name_of(&listener), "user.created");
            assert!(listener.krate.is_none());
        }
    }

    #[test]
    fn accepts_any_return_type_and_leaves_it_to_the_runtime() {
        for output in [
            quote!(),
            quote!(-> ()),
            quote!(-> Result<(), String>),
            quote!(-> std::result::Result<(), Box<dyn std::error::Error + Send + Sync>>),
            // Reported by rustc at the return type, through `ListenerOutput`.
            quote!(-> i32),
        ] {
            parses(
                quote!("user.created"),
                quote!(async fn on_user_created(event: &UserCreated) #output {}),
            );
        }
    }

    #[test]
    fn accepts_attributes_visibility_and_where_the_fn_lives() {
        parses(
            quote!("user.created"),
            quote! {
                /// Docs.
                #[inline]
                pub(crate) async fn on_user_created(event: &UserCreated) -> Result<(), String> {
                    Ok(())
                }
            },
        );
    }

    #[test]
    fn reads_the_crate_option() {
        for (args, path) in [
            (quote!("a.b", crate = "renamed"), "renamed"),
            (quote!("a.b", crate = "::bus"), ":: bus"),
            (
                quote!("a.b", crate = "::my_app::reexports::bus",),
                ":: my_app :: reexports :: bus",
            ),
            (quote!(crate = "renamed", "a.b"), "renamed"),
        ] {
            let listener = parses(args, quote! { async fn f(event: &E) {} });
            let krate = listener.krate.as_ref().map(tokens);
            assert_eq!(krate.as_deref(), Some(path));
        }
    }

    #[test]
    fn accepts_patterns() {
        for pattern in ["orders.*", "orders.*.created", "orders.>", "*.>", ">"] {
            let listener = parses(quote!(#pattern), quote! { async fn f(event: &E) {} });
            assert_eq!(name_of(&listener), pattern);
        }
    }

    #[test]
    fn normalises_the_event_name_literal() {
        let listener = parses(quote!(r"user.created"), quote! { async fn f(event: &E) {} });
        assert_eq!(tokens(&listener.name), "\"user.created\"");
    }

    /// The tables that `bus-core` tests its run-time checks with: the macro accepts every
    /// valid event name, rejects the invalid ones that hold no wildcard with the runtime's
    /// message, and agrees with the runtime on every pattern.
    #[test]
    fn checks_names_as_patterns_with_the_runtime_tables() {
        for &(name, valid) in bus_names::CASES {
            let result = listener(quote!(#name), quote! { async fn f(event: &E) {} });
            match (result, bus_names::check_event_name(name)) {
                (Ok(listener), Ok(())) if valid => assert_eq!(name_of(&listener), name),
                // Not an event name, but maybe a pattern: the runtime's pattern check decides.
                (result, Err(_)) if !valid && name.contains(['*', '>']) => {
                    let pattern = bus_names::check_pattern(name);
                    assert_eq!(result.is_ok(), pattern.is_ok(), "{name:?}");
                }
                (Err(error), Err(problem)) if !valid => {
                    assert_eq!(error.to_string(), problem.message(), "{name:?}");
                    assert_eq!(error.into_iter().count(), 1, "{name:?}");
                }
                (result, _) => panic!(
                    "{name:?}: expected valid = {valid}, the macro says {:?}",
                    result.err().map(|error| error.to_string())
                ),
            }
        }
        for &(pattern, valid) in bus_names::PATTERN_CASES {
            let result = listener(quote!(#pattern), quote! { async fn f(event: &E) {} });
            match (result, bus_names::check_pattern(pattern)) {
                (Ok(listener), Ok(())) if valid => assert_eq!(name_of(&listener), pattern),
                (Err(error), Err(problem)) if !valid => {
                    assert_eq!(error.to_string(), problem.message(), "{pattern:?}");
                    assert_eq!(error.into_iter().count(), 1, "{pattern:?}");
                }
                (result, _) => panic!(
                    "{pattern:?}: expected valid = {valid}, the macro says {:?}",
                    result.err().map(|error| error.to_string())
                ),
            }
        }
    }

    #[test]
    fn rejects_too_long_a_name() {
        let name = "a".repeat(bus_names::MAX_NAME_LEN + 1);
        let message = error(quote!(#name), quote! { async fn f(event: &E) {} });
        assert!(message.contains("bytes long"), "{message}");
        let name = "a".repeat(bus_names::MAX_NAME_LEN);
        parses(quote!(#name), quote! { async fn f(event: &E) {} });
    }

    #[test]
    fn reports_each_mistake_in_the_arguments() {
        let item = quote! { async fn f(event: &E) {} };
        #[rustfmt::skip]
        let cases = [
            (quote!(""), "must not be empty"),
            (quote!("user created"), "the character ' ' at byte 4"),
            (quote!("ord*"), "listener pattern has `*` inside a token at byte 3"),
            (quote!("orders.>.x"), "listener pattern has `>` at byte 7 before its last token"),
            (quote!("user..created"), "empty token"),
            (quote!(user.created), "must be a string literal such as `\"user.created\"`"),
            (quote!(USER_CREATED), "must be a string literal"),
            (quote!(42), "must be a string literal"),
            (quote!(b"user.created"), "must be a string literal"),
            (quote!("a.b", "c.d"), "takes one event name"),
            (quote!(once, "a.b", "c.d"), "takes one event name"),
            (quote!("a.b", foo = 1), "unknown option `foo`, expected one of: `once`, `concurrency`, `timeout`, `retry`, `backoff`, `group`, `crate`"),
            (quote!("a.b", r#foo = 1), "unknown option `foo`, expected one of: `once`"),
            (quote!("a.b", onec), "unknown option `onec`, expected one of: `once`"),
            (quote!(retries = 3), "unknown option `retries`"),
            (quote!("a.b", crate = "bus", crate = "bus"), "duplicate option `crate`"),
            (quote!("a.b", crate = bus), "`crate` must be the path of the `bus` crate"),
            (quote!("a.b", crate = "not a path"), "`crate` must be the path"),
            (quote!("a.b", crate = "bus<T>"), "`crate` must be the path"),
            (quote!("a.b", crate = ""), "`crate` must be the path"),
            (quote!("a.b", crate), "option `crate` needs a value; write `crate = \"bus\"`"),
            (quote!(once, once), "duplicate option `once`"),
            (quote!(once = true), "`once` takes no value"),
            (quote!(concurrency), "option `concurrency` needs a value; write `concurrency = 1`"),
            (quote!(concurrency = 0), "`concurrency` must be at least 1"),
            (quote!(concurrency = "1"), "`concurrency` must be an integer literal, not a string; remove the quotes: `concurrency = 1`"),
            (quote!(concurrency = "one"), "`concurrency` must be an integer literal, such as `concurrency = 1`"),
            (quote!(concurrency = -1), "`concurrency` must be an integer literal"),
            (quote!(concurrency = 1.5), "`concurrency` must be an integer literal"),
            (quote!(concurrency = 1, concurrency = 2), "duplicate option `concurrency`"),
            (quote!(retry = "3"), "`retry` must be an integer literal, not a string"),
            (quote!(retry = true), "`retry` must be an integer literal, such as `retry = 3`"),
            (quote!(retry = 4294967296), "`retry` must be at most 4294967295"),
            (quote!(retry), "option `retry` needs a value; write `retry = 3`"),
            (quote!(timeout = 5), "`timeout` must be a duration in a string, with its unit: write `timeout = \"5s\"` or `timeout = \"5ms\"`"),
            (quote!(timeout = 1.5), "`timeout` must be a duration in a string, such as `timeout = \"5s\"`"),
            (quote!(timeout = "5"), "invalid duration \"5\" for `timeout`: time unit needed, for example 5sec or 5ms"),
            (quote!(timeout = "five seconds"), "invalid duration \"five seconds\" for `timeout`: expected number at 0"),
            (quote!(timeout = "5 lightyears"), "unknown time unit \"lightyears\""),
            (quote!(timeout = ""), "value was empty"),
            (quote!(timeout = "0s"), "`timeout` must be longer than zero"),
            (quote!(timeout), "write `timeout = \"5s\"`"),
            (quote!(retry = 1, backoff = 100), "write `backoff = \"100s\"` or `backoff = \"100ms\"`"),
            (quote!(retry = 1, backoff = fast), "`backoff` must be a duration in a string, such as `backoff = \"100ms\"`"),
            (quote!(retry = 1, backoff = "1x"), "invalid duration \"1x\" for `backoff`"),
            (quote!(backoff = "100ms"), "`backoff` is the delay before a retry, but this listener does not retry; add `retry = 3`"),
            (quote!(retry = 0, backoff = "100ms"), "but this listener has `retry = 0`"),
            // `retry` is wrong: that error alone.
            (quote!(retry = "3", backoff = "100ms"), "`retry` must be an integer literal"),
            (quote!(group), "option `group` needs a value; write `group = false` or `group = \"name\"`"),
            (quote!(group = true), "`group = true` is the default"),
            (quote!(group = ""), "a group name must not be empty or hold whitespace"),
            (quote!(group = "a b"), "a group name must not be empty or hold whitespace"),
            (quote!(group = billing), "`group` must be `false` (every instance gets every event) or a string literal"),
            (quote!(group = 0), "`group` must be `false`"),
            (quote!(group = false, group = "x"), "duplicate option `group`"),
        ];
        for (args, expected) in cases {
            let message = error(args.clone(), item.clone());
            assert!(message.contains(expected), "{args}: {message}");
        }
    }

    #[test]
    fn leaves_the_name_to_the_event_type_when_none_is_given() {
        for args in [
            quote!(),
            quote!(crate = "bus"),
            quote!(once),
            quote!(retry = 3,),
        ] {
            let listener = parses(args.clone(), quote! { async fn f(event: Arc<E>) {} });
            assert!(listener.name.is_none(), "{args}");
            assert_eq!(tokens(&listener.event), "E");
        }
    }

    #[test]
    fn reads_the_options() {
        let item = quote! { async fn f(event: &E) {} };
        let listener = parses(quote!("a.b"), item.clone());
        assert!(!listener.once);
        assert!(listener.policy.is_empty());

        for args in [
            quote!("a.b", once),
            quote!(once, "a.b"),
            quote!(once),
            quote!(once,),
        ] {
            assert!(parses(args.clone(), item.clone()).once, "{args}");
        }

        let all = PolicyOptions {
            concurrency: Some(1),
            timeout: Some(Duration::from_secs(5)),
            retry: Some(3),
            backoff: Some(Duration::from_millis(100)),
            group: None,
        };
        for args in [
            quote!(
                "a.b",
                concurrency = 1,
                timeout = "5s",
                retry = 3,
                backoff = "100ms"
            ),
            quote!(
                backoff = "100ms",
                retry = 3,
                timeout = "5s",
                concurrency = 1
            ),
            quote!(
                once,
                concurrency = 1,
                timeout = "5 sec",
                retry = 3_u32,
                backoff = "0.1s"
            ),
        ] {
            let listener = parses(args.clone(), item.clone());
            assert_eq!(listener.policy, all, "{args}");
        }
        let listener = parses(quote!(timeout = "1m 30s", retry = 0), item.clone());
        assert_eq!(
            listener.policy,
            PolicyOptions {
                timeout: Some(Duration::from_secs(90)),
                retry: Some(0),
                ..PolicyOptions::default()
            }
        );
        assert!(listener.name.is_none());
        let listener = parses(quote!(retry = 1, backoff = "0s"), item.clone());
        assert_eq!(listener.policy.backoff, Some(Duration::ZERO));
        let listener = parses(quote!(group = false), item.clone());
        assert_eq!(listener.policy.group, Some(GroupOption::Ungrouped));
        let listener = parses(quote!("a.b", group = "billing.orders"), item);
        assert_eq!(
            listener.policy.group,
            Some(GroupOption::Named("billing.orders".to_owned()))
        );
    }

    #[test]
    fn reports_every_option_mistake_in_source_order() {
        let messages = messages(
            quote!(concurrency = 0, onec, "a b", timeout = "5", backoff = "1s"),
            quote! { async fn f(event: &E) {} },
        );
        let expected = [
            "`concurrency` must be at least 1",
            "unknown option `onec`",
            "event name has the character ' '",
            "invalid duration \"5\"",
            "`backoff` is the delay before a retry",
        ];
        crate::diagnostics::assert_messages(&messages, &expected);
    }

    #[test]
    fn reports_syntax_errors_in_the_arguments() {
        for args in [
            quote!("a.b" "c.d"),
            quote!("a.b", crate =),
            quote!(,),
            quote!(once once),
            quote!(retry = ),
        ] {
            assert!(
                !messages(args.clone(), quote! { async fn f(event: &E) {} }).is_empty(),
                "{args}"
            );
        }
    }

    #[test]
    fn reports_each_mistake_in_the_signature() {
        #[rustfmt::skip]
        let cases = [
            (quote!(fn f(event: &E) {}), "requires an `async fn`"),
            (quote!(async fn f() {}), "takes the event as its one argument"),
            (quote!(async fn f(event: &E, db: &Db) {}), "optionally, its envelope"),
            (quote!(async fn f(event: &E, db: Arc<Envelope>) {}), "optionally, its envelope"),
            (quote!(async fn f(event: &E, db: &mut Envelope) {}), "optionally, its envelope"),
            (quote!(async fn f(event: &E, e: &Envelope, x: u8) {}), "optionally, its envelope"),
            (quote!(async fn f(&self) {}), "cannot take `self`"),
            (quote!(async fn f(self: Arc<Self>, event: &E) {}), "cannot take `self`"),
            (quote!(async fn f<E>(event: &E) {}), "cannot be generic"),
            (quote!(async fn f<const N: usize>(event: &[u8; N]) {}), "cannot be generic"),
            (quote!(async fn f<'a, E>(event: &'a E) {}), "cannot be generic"),
            (quote!(async fn f<'a>(event: &'a E) {}), "cannot have lifetime parameters"),
            (quote!(async fn f(event: &E) where E: Clone {}), "cannot have a `where` clause"),
            (quote!(async fn f(event: &'static E) {}), "remove the lifetime"),
            (quote!(async fn f(event: &'a E) {}), "remove the lifetime"),
            (quote!(async fn f(event: &impl Debug) {}), "cannot take `impl Trait`"),
            (quote!(async fn f(event: impl Debug) {}), "cannot take `impl Trait`"),
            (quote!(async fn f(event: Arc<impl Debug>) {}), "cannot take `impl Trait`"),
            (quote!(async fn f(event: &Vec<impl Debug>) {}), "cannot take `impl Trait`"),
            (quote!(async fn f(event: &mut E) {}), "cannot be borrowed mutably"),
            (quote!(async unsafe fn f(event: &E) {}), "cannot be an `unsafe fn`"),
            (quote!(async extern "C" fn f(event: &E) {}), "cannot have an `extern` ABI"),
            (quote!(async fn f(event: &E, ...) {}), "remove `...`"),
        ];
        for (item, expected) in cases {
            let message = error(quote!("a.b"), item.clone());
            assert!(message.contains(expected), "{item}: {message}");
        }
    }

    #[test]
    fn reports_an_item_that_is_not_a_fn() {
        for item in [
            quote!(
                struct UserCreated {
                    id: u64,
                }
            ),
            quote! { enum E {} },
            quote!(impl Foo {}),
            quote! { mod m {} },
            quote! { static S: u8 = 0; },
            quote! { use std::sync::Arc; },
        ] {
            let message = error(quote!("a.b"), item.clone());
            assert!(
                message.contains("can only be applied to an `async fn`"),
                "{item}: {message}"
            );
        }
        // Not an item at all (attribute macros only ever get items; stay total anyway).
        for item in [quote!(), quote!(let x = 1;)] {
            assert_eq!(messages(quote!("a.b"), item).len(), 1);
        }
    }

    #[test]
    fn reports_every_mistake_at_once_in_source_order() {
        let messages = messages(
            quote!("user created", retries = 3),
            quote! { fn f(event: &mut E, retry: u32) {} },
        );
        let expected = [
            "event name has the character",
            "unknown option `retries`",
            "requires an `async fn`",
            "cannot be borrowed mutably",
            "optionally, its envelope",
        ];
        crate::diagnostics::assert_messages(&messages, &expected);
    }

    #[test]
    fn leaves_the_body_to_rustc() {
        // Half-typed code: rustc reports it, once; the registration is still generated.
        parses(quote!("a.b"), quote! { async fn f(event: &E) { let = ; } });
    }

    #[test]
    fn leaves_const_async_to_rustc() {
        // rustc's parser rejects `const async fn` before the attribute runs.
        assert!(messages(quote!("a.b"), quote! { const async fn f(event: &E) {} }).is_empty());
        let messages = messages(quote!("a.b"), quote! { const fn f(event: &E) {} });
        assert_eq!(messages.len(), 2, "{messages:#?}");
        assert!(
            messages[0].contains("cannot be a `const fn`"),
            "{messages:#?}"
        );
    }

    #[test]
    fn reports_a_method_once() {
        let message = error(quote!("a.b"), quote! { async fn f(&self, event: &E) {} });
        assert!(message.contains("cannot take `self`"), "{message}");
    }
}
