#[automatically_derived]
impl ::bus::__private::Event for UserCreated {
    const NAME: &'static str = "user.created";
}
#[doc(hidden)]
const _: () = {
    ::bus::__private::inventory::submit! {
        ::bus::__private::CodecEntry::new(|| ::bus::__private::codec_of!(UserCreated))
    }
};
