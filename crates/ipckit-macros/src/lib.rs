//! The `#[interface]` attribute of ipckit RPC, re-exported as `ipckit::rpc::interface`; see
//! the `ipckit::rpc` module docs for its use.
//!
//! Windows counterpart: MIDL, which turns an IDL interface into a client stub and a server
//! stub. Here the interface is a Rust trait; no build script and no code generator run.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{
    FnArg, Ident, ItemTrait, LitStr, Pat, ReturnType, Token, TraitItem, Type, parse_macro_input,
};

struct Args {
    uuid: LitStr,
    version: LitStr,
}

impl Parse for Args {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        let mut uuid = None;
        let mut version = None;
        let pairs = Punctuated::<syn::MetaNameValue, Token![,]>::parse_terminated(input)?;
        for p in pairs {
            let key = p
                .path
                .get_ident()
                .map(|i| i.to_string())
                .unwrap_or_default();
            let syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) = p.value
            else {
                return Err(syn::Error::new_spanned(p.value, "expected a string"));
            };
            match key.as_str() {
                "uuid" => uuid = Some(s),
                "version" => version = Some(s),
                _ => return Err(syn::Error::new_spanned(p.path, "expected uuid or version")),
            }
        }
        Ok(Args {
            uuid: uuid.ok_or_else(|| input.error("missing uuid = \"...\""))?,
            version: version.unwrap_or_else(|| LitStr::new("1.0", Span::call_site())),
        })
    }
}

fn valid_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// Whether `ty` is `&CallContext` (any path ending in `CallContext`).
fn is_ctx(ty: &Type) -> bool {
    if let Type::Reference(r) = ty
        && let Type::Path(p) = &*r.elem
    {
        return p
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "CallContext");
    }
    false
}

/// Whether `ty` is `Vec<u8>` (any path ending in `Vec<u8>`): such values travel as one byte
/// string (`ipckit::macro_support`), the same bytes on the wire, without serde's per-element
/// loop.
fn is_bytes(ty: &Type) -> bool {
    let Type::Path(p) = ty else { return false };
    let Some(seg) = p.path.segments.last() else {
        return false;
    };
    if seg.ident != "Vec" {
        return false;
    }
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return false;
    };
    matches!(
        a.args.first(),
        Some(syn::GenericArgument::Type(Type::Path(t))) if a.args.len() == 1 && t.path.is_ident("u8")
    )
}

/// `Result<T, E>` → `Some((T, E))`.
fn result_parts(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(p) = ty else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(a) = &seg.arguments else {
        return None;
    };
    let mut it = a.args.iter().filter_map(|g| match g {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let t = it.next()?;
    let e = it.next()?;
    Some((t, e))
}

/// `async fn m(&self, ..) -> R` becomes `fn m(&self, ..) -> impl Future<Output = R> + Send`:
/// the server runs the future on a tokio runtime, so it must be `Send` (implementations may
/// still write `async fn`).
fn desugar_async(sig: &mut syn::Signature) {
    sig.asyncness = None;
    let out: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, t) => (**t).clone(),
    };
    sig.output = syn::parse_quote! {
        -> impl ::std::future::Future<Output = #out> + ::std::marker::Send
    };
}

/// Marks a trait as an RPC interface: `#[interface(uuid = "...", version = "1.0")]`.
///
/// For a trait `Calc` it generates `CalcClient` (blocking), `CalcAsyncClient` (with ipckit's
/// `tokio` feature) and `CalcServer` (the dispatch, an `ipckit::rpc::Dispatch`). Method `n` of
/// the trait (in order) is procedure number `n`. Methods take `&self`, then optionally
/// `ctx: &CallContext`, then owned serde arguments; they return a serde value, a
/// `Result<T, E>` (with `E` an application error that travels typed), or nothing. A method
/// marked `#[oneway]` returns nothing and its caller does not wait.
///
/// Methods may be `async fn` (asynchronous server routines, answered on Windows with
/// `RpcAsyncCompleteCall`): the trait then declares them as returning
/// `impl Future<Output = R> + Send` (implementations may write `async fn`), and the server
/// runs their calls on the tokio runtime of `ServerOptions::runtime` (ipckit's `tokio`
/// feature) without holding a thread while they await. A trait may mix both kinds; the
/// clients and the wire are the same for both.
#[proc_macro_attribute]
pub fn interface(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = parse_macro_input!(attr as Args);
    let tr = parse_macro_input!(item as ItemTrait);
    match expand(args, tr) {
        Ok(t) => t.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(args: Args, mut tr: ItemTrait) -> syn::Result<TokenStream2> {
    let uuid = args.uuid.value();
    if !valid_uuid(&uuid) {
        return Err(syn::Error::new_spanned(
            &args.uuid,
            "uuid must look like 6b29fc40-ca47-1067-b31d-00dd010662da",
        ));
    }
    let ver = args.version.value();
    let (major, minor) = ver
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u16>().ok()?, b.parse::<u16>().ok()?)))
        .ok_or_else(|| syn::Error::new_spanned(&args.version, "version must be \"MAJOR.MINOR\""))?;

    let name = &tr.ident;
    let vis = &tr.vis;
    let client = format_ident!("{}Client", name);
    let aclient = format_ident!("{}AsyncClient", name);
    let server = format_ident!("{}Server", name);

    let mut client_methods = Vec::new();
    let mut async_methods = Vec::new();
    let mut arms = Vec::new();
    let mut async_arms = Vec::new();
    let mut opnum: u16 = 0;

    for item in &mut tr.items {
        let TraitItem::Fn(f) = item else { continue };
        let before = f.attrs.len();
        f.attrs.retain(|a| !a.path().is_ident("oneway"));
        let oneway = f.attrs.len() != before;
        let is_async = f.sig.asyncness.is_some();
        let orig = f.sig.clone();
        if is_async {
            desugar_async(&mut f.sig);
        }
        let sig = &orig;
        let mname = &sig.ident;
        if !sig.generics.params.is_empty() {
            return Err(syn::Error::new_spanned(sig, "RPC methods are not generic"));
        }
        let mut inputs = sig.inputs.iter();
        match inputs.next() {
            Some(FnArg::Receiver(r)) if r.reference.is_some() && r.mutability.is_none() => {}
            _ => {
                return Err(syn::Error::new_spanned(sig, "RPC methods take &self first"));
            }
        }
        let mut takes_ctx = false;
        let mut names: Vec<Ident> = Vec::new();
        let mut types: Vec<Type> = Vec::new();
        for (i, a) in inputs.enumerate() {
            let FnArg::Typed(pt) = a else { unreachable!() };
            if i == 0 && is_ctx(&pt.ty) {
                takes_ctx = true;
                continue;
            }
            let id = match &*pt.pat {
                Pat::Ident(p) => p.ident.clone(),
                _ => format_ident!("arg{}", i),
            };
            names.push(id);
            types.push((*pt.ty).clone());
        }
        let docs: Vec<_> = f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .collect();
        let ret = match &sig.output {
            ReturnType::Default => None,
            ReturnType::Type(_, t) => Some((**t).clone()),
        };
        let op = opnum;
        opnum = opnum
            .checked_add(1)
            .ok_or_else(|| syn::Error::new_spanned(sig, "too many methods"))?;
        // Arguments as a tuple; `Vec<u8>` ones as byte strings (same encoding, one copy).
        let wrapped: Vec<TokenStream2> = names
            .iter()
            .zip(&types)
            .map(|(n, t)| {
                if is_bytes(t) {
                    quote! { ::ipckit::macro_support::BytesRef(&#n) }
                } else {
                    quote! { #n }
                }
            })
            .collect();
        let call_args = quote! { &(#(#wrapped,)*) };
        let wire_types: Vec<TokenStream2> = types
            .iter()
            .map(|t| {
                if is_bytes(t) {
                    quote! { ::ipckit::macro_support::ByteBuf }
                } else {
                    quote! { #t }
                }
            })
            .collect();
        let unwrap_args: Vec<TokenStream2> = names
            .iter()
            .zip(&types)
            .filter(|(_, t)| is_bytes(t))
            .map(|(n, _)| quote! { let #n = #n.0; })
            .collect();
        let ctx_arg = if takes_ctx {
            quote! { ctx, }
        } else {
            quote! {}
        };
        let bad_args = if is_async {
            quote! { ::std::option::Option::Some(::std::boxed::Box::pin(::std::future::ready(
            ::ipckit::rpc::Outcome::Fault(1783, e.to_string())))) }
        } else {
            quote! { ::ipckit::rpc::Outcome::Fault(1783, e.to_string()) }
        };
        let decode_args = quote! {
            let (#(#names,)*): (#(#wire_types,)*) = match ::ipckit::rpc::decode(args) {
                Ok(v) => v,
                Err(e) => return #bad_args,
            };
            #(#unwrap_args)*
        };
        // The method's call: on the dispatcher's `self.0`, or (async) awaited inside a future
        // that owns the implementation and the call's context.
        let invoke = if is_async {
            let actx = if takes_ctx {
                quote! { &ctx, }
            } else {
                quote! {}
            };
            quote! { imp.#mname(#actx #(#names),*).await }
        } else {
            quote! { self.0.#mname(#ctx_arg #(#names),*) }
        };
        // Where the arm goes: `dispatch`, or `dispatch_async` (with a fault in `dispatch`).
        let mut push_arm = |body: TokenStream2| {
            if is_async {
                let own_ctx = if takes_ctx {
                    quote! { let ctx = ctx.clone(); }
                } else {
                    quote! {}
                };
                async_arms.push(quote! {
                    #op => {
                        #decode_args
                        let imp = ::std::sync::Arc::clone(&self.0);
                        #own_ctx
                        ::std::option::Option::Some(::std::boxed::Box::pin(async move { #body }))
                    }
                });
                arms.push(quote! {
                    #op => ::ipckit::rpc::Outcome::Fault(1726, ::std::string::String::from(
                        "an async procedure: it runs through dispatch_async")),
                });
            } else {
                arms.push(quote! { #op => { #decode_args #body } });
            }
        };
        if oneway {
            if ret.is_some() {
                return Err(syn::Error::new_spanned(
                    sig,
                    "a #[oneway] method returns nothing",
                ));
            }
            client_methods.push(quote! {
                #(#docs)*
                /// One-way: returns once the request is sent.
                pub fn #mname(&self, #(#names: #types),*) -> ::ipckit::Result<()> {
                    self.client.call_oneway(#op, #call_args)
                }
            });
            async_methods.push(quote! {
                #(#docs)*
                pub async fn #mname(&self, #(#names: #types),*) -> ::ipckit::Result<()> {
                    self.client.call_oneway(#op, #call_args).await
                }
            });
            push_arm(quote! {
                #invoke; ::ipckit::rpc::Outcome::Ok(::std::vec::Vec::new())
            });
            continue;
        }
        match ret.as_ref().and_then(result_parts) {
            Some((t, e)) => {
                let (wire_t, from_wire, to_wire) = if is_bytes(&t) {
                    (
                        quote! { ::ipckit::macro_support::ByteBuf },
                        quote! { .map(|b| b.0) },
                        quote! { .map(::ipckit::macro_support::ByteBuf) },
                    )
                } else {
                    (quote! { #t }, quote! {}, quote! {})
                };
                client_methods.push(quote! {
                    #(#docs)*
                    pub fn #mname(&self, #(#names: #types),*) -> ::std::result::Result<#t, ::ipckit::rpc::CallError<#e>> {
                        self.client.call::<_, #wire_t, #e>(#op, #call_args)#from_wire
                    }
                });
                async_methods.push(quote! {
                    #(#docs)*
                    pub async fn #mname(&self, #(#names: #types),*) -> ::std::result::Result<#t, ::ipckit::rpc::CallError<#e>> {
                        self.client.call::<_, #wire_t, #e>(#op, #call_args).await #from_wire
                    }
                });
                push_arm(quote! {
                    ::ipckit::rpc::outcome((#invoke)#to_wire)
                });
            }
            None => {
                let t = ret.clone().unwrap_or_else(|| syn::parse_quote!(()));
                let (wire_t, from_wire, to_wire) = if is_bytes(&t) {
                    (
                        quote! { ::ipckit::macro_support::ByteBuf },
                        quote! { .map(|b| b.0) },
                        quote! { ::ipckit::macro_support::ByteBuf },
                    )
                } else {
                    (quote! { #t }, quote! {}, quote! {})
                };
                client_methods.push(quote! {
                    #(#docs)*
                    pub fn #mname(&self, #(#names: #types),*) -> ::ipckit::Result<#t> {
                        self.client.call::<_, #wire_t, ()>(#op, #call_args)#from_wire.map_err(::ipckit::rpc::CallError::into_error)
                    }
                });
                async_methods.push(quote! {
                    #(#docs)*
                    pub async fn #mname(&self, #(#names: #types),*) -> ::ipckit::Result<#t> {
                        self.client.call::<_, #wire_t, ()>(#op, #call_args).await #from_wire.map_err(::ipckit::rpc::CallError::into_error)
                    }
                });
                push_arm(quote! {
                    ::ipckit::rpc::outcome::<_, ()>(Ok(#to_wire(#invoke)))
                });
            }
        }
    }

    tr.supertraits.push(syn::parse_quote!(::std::marker::Send));
    tr.supertraits.push(syn::parse_quote!(::std::marker::Sync));
    tr.supertraits.push(syn::parse_quote!('static));
    if tr.colon_token.is_none() {
        tr.colon_token = Some(Default::default());
    }
    let n_ops = opnum;
    let dispatch_async = if async_arms.is_empty() {
        quote! {}
    } else {
        quote! {
            #[allow(unused_variables)]
            fn dispatch_async(&self, ctx: &::ipckit::rpc::CallContext, opnum: u16, args: &[u8]) -> ::std::option::Option<::ipckit::rpc::CallFuture> {
                match opnum {
                    #(#async_arms)*
                    _ => ::std::option::Option::None,
                }
            }
        }
    };
    let client_doc =
        format!("The blocking client of [`{name}`] (interface {uuid} v{major}.{minor}).");
    let aclient_doc = format!("The async (tokio) client of [`{name}`].");
    let server_doc = format!(
        "The server dispatch of [`{name}`]: register `{server}::new(implementation)` with an `ipckit::rpc::Server`."
    );

    Ok(quote! {
        #tr

        #[doc = #client_doc]
        #[derive(Debug, Clone)]
        #vis struct #client {
            client: ::ipckit::rpc::Client,
        }

        impl #client {
            /// The interface's UUID and version.
            pub const INTERFACE: ::ipckit::rpc::InterfaceId = ::ipckit::rpc::InterfaceId::new(
                ::ipckit::rpc::Uuid::parse_const(#uuid), #major, #minor);

            /// Connects to a string binding and binds to the interface.
            pub fn connect(binding: &str) -> ::ipckit::Result<Self> {
                Self::connect_with(&::ipckit::rpc::ClientOptions::new(), binding)
            }
            /// [`connect`](Self::connect) with options.
            pub fn connect_with(opts: &::ipckit::rpc::ClientOptions, binding: &str) -> ::ipckit::Result<Self> {
                Ok(Self { client: opts.connect(binding, Self::INTERFACE)? })
            }
            /// The untyped client underneath.
            pub fn client(&self) -> &::ipckit::rpc::Client {
                &self.client
            }
            #(#client_methods)*
        }

        ::ipckit::__rpc_if_tokio! {
            #[doc = #aclient_doc]
            #[derive(Debug, Clone)]
            #vis struct #aclient {
                client: ::ipckit::rpc::AsyncClient,
            }

            impl #aclient {
                /// Connects to a string binding and binds to the interface.
                pub async fn connect(binding: &str) -> ::ipckit::Result<Self> {
                    Self::connect_with(&::ipckit::rpc::ClientOptions::new(), binding).await
                }
                /// [`connect`](Self::connect) with options.
                pub async fn connect_with(opts: &::ipckit::rpc::ClientOptions, binding: &str) -> ::ipckit::Result<Self> {
                    Ok(Self { client: ::ipckit::rpc::AsyncClient::connect(opts, binding, #client::INTERFACE).await? })
                }
                /// The untyped client underneath.
                pub fn client(&self) -> &::ipckit::rpc::AsyncClient {
                    &self.client
                }
                #(#async_methods)*
            }
        }

        #[doc = #server_doc]
        #vis struct #server<T>(pub ::std::sync::Arc<T>);

        impl<T> ::std::fmt::Debug for #server<T> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(::std::stringify!(#server))
            }
        }

        impl<T: #name> #server<T> {
            /// The dispatcher of `implementation`, ready for `ipckit::rpc::Server::new`.
            pub fn new(implementation: T) -> ::std::sync::Arc<dyn ::ipckit::rpc::Dispatch> {
                ::std::sync::Arc::new(#server(::std::sync::Arc::new(implementation)))
            }
        }

        impl<T: #name> ::ipckit::rpc::Dispatch for #server<T> {
            fn interface(&self) -> ::ipckit::rpc::InterfaceId {
                #client::INTERFACE
            }
            fn procedures(&self) -> u16 {
                #n_ops
            }
            #[allow(unused_variables)]
            fn dispatch(&self, ctx: &::ipckit::rpc::CallContext, opnum: u16, args: &[u8]) -> ::ipckit::rpc::Outcome {
                match opnum {
                    #(#arms)*
                    _ => ::ipckit::rpc::Outcome::Fault(1745, ::std::format!("procedure {opnum} out of range")),
                }
            }
            #dispatch_async
        }
    })
}
