"""``triton.language`` stand-in: every attribute is an inert placeholder (annotations such as
``tl.constexpr`` only need to exist)."""


class _Inert:
    def __getattr__(self, name):
        return self

    def __call__(self, *args, **kwargs):
        raise RuntimeError("triton is not installed; this stand-in cannot run kernels")


def __getattr__(name):
    return _Inert()
