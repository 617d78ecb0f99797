"""Complexity of a model: parameters, multiply-adds (torch.utils.flop_counter, MAdds = FLOPs / 2), per-stage table.

    python tools/profile.py mobilenet_v2 --size 224 224
    python tools/profile.py ssdlite320_mobilenet_v2 --size 320 320 --set num_classes=91
    python tools/profile.py deeplabv3_mobilenet_v2 --size 513 513 --set aspp=full

The logic lives in ``mnv2_vision.profiling.main``.
"""
import sys

if __name__ == "profile":
    # ``python tools/<any tool>.py`` puts tools/ first on sys.path, so the standard library's ``import profile``
    # (made by cProfile, which torch imports) finds this file. Then this file stands in for the standard module:
    # load the real one and put it in sys.modules, which is what the import statement hands back.
    import importlib.util
    import sysconfig

    _spec = importlib.util.spec_from_file_location("profile", sysconfig.get_paths()["stdlib"] + "/profile.py")
    _stdlib_profile = importlib.util.module_from_spec(_spec)
    sys.modules["profile"] = _stdlib_profile
    _spec.loader.exec_module(_stdlib_profile)
    globals().update({k: v for k, v in vars(_stdlib_profile).items() if not k.startswith("__")})
elif __name__ == "__main__":
    from pathlib import Path

    sys.path[0] = str(Path(__file__).resolve().parents[1])  # the repository root instead of tools/
    from mnv2_vision.profiling import main

    main()
