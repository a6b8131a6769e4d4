"""Routing ImageJ 1.x commands to Python.

How a command reaches Python
----------------------------
ImageJ 1.x runs every menu command and every macro ``run("...")`` through ``ij.Executer``,
which first offers the command name to each registered ``ij.CommandListener``. This module
registers one, implemented in Python through JPype; for the commands of
:data:`particleseg.fiji.options.COMMAND_NAMES` it shows a GenericDialog (which a macro fills
from its option string, as for built-in commands), runs the command and returns ``null`` so
ImageJ does nothing more; any other command passes through untouched. No Java is compiled, and
the same code works with a plain ``ij.jar`` and inside Fiji (imagej-legacy keeps
``ij.Executer``).

Because the listener takes the command before ``Executer`` records it, the bridge does the
recorder's part itself (``Recorder.setCommand`` / ``recordOption`` / ``saveCommand``), once the
command has run (a failed or canceled call is not recorded), so the macro recorder writes
``run("Segment Particles...", "model=default threshold=0.5 split ...")`` with every parameter.

Dialogs and macros
------------------
Commands with many parameters have a compact main GenericDialog and a second, "advanced" one
that its last check box opens; in a macro both are filled from the one option string. A key
left out of a macro takes its default (the chosen bundle's for the segmentation parameters),
check boxes included; ``key=false`` unchecks a box.

Errors
------
A problem in a command is shown the ImageJ way: ``IJ.error`` with the command as title; in a
macro this aborts the macro and the macro interpreter reports it ("Macro Error ... in line N")
like any built-in command's error. Nothing reaches the user as a Java or Python stack trace;
unexpected failures (bugs) put their traceback in the Log window only.
A note (:class:`~particleseg.errors.ParticlesegWarning`: no particles found, a particle-size
estimate out of range, ...) is one line in the Log, ``particleseg: note: ...``, the line the
command line prints (:func:`~particleseg.errors.notes_to`).

Headless sessions install a *dialog guard*: any modal dialog that opens (a macro error, a
message, a dialog without macro options) is logged and closed at once, so a batch run can
never hang waiting for a click.
"""

from __future__ import annotations

import atexit
import contextlib
import sys
import threading
import time
import traceback
from typing import Any

from ..errors import ParticlesegError, notes_to
from ..models import list_bundles
from ..params import bundle_defaults
from . import commands as cmds
from . import publish
from .options import (
    ADVANCED,
    COMMAND_NAMES,
    NONE,
    SPECS,
    CommandSpec,
    build_specs,
    given_booleans,
    normalize_options,
    parse_macro_options,
    recorded_options,
)

MENU_LABEL = "Particle Segmentation"
MACRO_CANCELED = "Macro canceled"

_state: dict[str, Any] = {
    "installed": False,
    "listener": None,
    "guard": None,
    "guard_paused": False,
    "macros_running": 0,
}
_last_values: dict[str, dict] = {}
#: callables (what, done, total) told about progress, e.g. the headless batch runner's bar
PROGRESS_HOOKS: list = []
#: (title, text) of the dialogs the guard closed
CLOSED_DIALOGS: list[tuple[str, str]] = []
#: how often the dialog guard looks for dialogs, and how long it disposes a closed one again
#: (longer while a macro runs: then the last DIALOG_REDISPOSE_N closed dialogs until it ends)
DIALOG_SWEEP_S, DIALOG_REDISPOSE_S, DIALOG_REDISPOSE_N = 0.2, 10.0, 20
#: how long the sweeper waits for the closes it posted to the event thread before it posts again
DIALOG_SHUT_WAIT_S = 2.0
_running_lock = threading.Lock()


class CommandError(ParticlesegError):
    """A command failed outside a macro and without a GUI (raised to the Python caller)."""


def _j(name: str):
    import scyjava  # Java: imported on first use, never by importing particleseg.fiji

    return scyjava.jimport(name)


# ------------------------------------------------------------------------------------------
# installation


def install(menus: bool = True, guard: bool = False) -> None:
    """Install the commands in ImageJ.

    Registers the command listener (once per JVM), the commands in ImageJ's command table (so
    Command Finder and ``List.setCommands`` know them) and, with an ImageJ window and ``menus``,
    the Plugins > Particle Segmentation menu. ``guard`` closes modal dialogs (headless runs).
    """
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    if not _state["installed"]:

        @jpype.JImplements("ij.CommandListener")
        class _Listener:
            @jpype.JOverride
            def commandExecuting(self, command):
                name = str(command)
                if name not in SPECS:
                    return command
                run_command(name, from_java=True)
                return None

        listener = _Listener()
        _j("ij.Executer").addCommandListener(listener)
        _state["listener"] = listener
        _state["installed"] = True
        atexit.register(_remove_command_listener)  # runs before the windows are disposed at exit
    register_commands()
    if menus:
        install_menu()
    if guard and _state["guard"] is None:
        install_dialog_guard()


def _remove_command_listener() -> None:
    """At exit, take the Python command listener out of ImageJ before its windows are disposed.

    Every command ImageJ runs calls the listener, also those that closing and disposing windows
    run on Java threads, and no Java thread may enter Python once Python finalizes. (The abort
    at exit that docs/fiji.md's Python example showed in about half of the whole-suite runs came
    from another such entry, JPype's reference queue: see
    :func:`particleseg.fiji.environment._stop_reference_queue`.)
    """
    try:
        _j("ij.Executer").removeCommandListener(_state["listener"])
    except Exception:  # noqa: BLE001 - the JVM shutting down
        pass


def installed() -> bool:
    """Return whether the command listener is installed in this process's ImageJ."""
    return bool(_state["installed"])


def register_commands() -> None:
    """Add the commands to ImageJ's command table (``Menus.getCommands``), if it has one.

    Commands already in the table (a Fiji with the SciJava scripts) are left as they are.
    """
    table = _j("ij.Menus").getCommands()
    if table is None:
        return
    for name in COMMAND_NAMES:
        if not table.containsKey(name):
            table.put(name, "particleseg.fiji (Python)")


def install_menu() -> bool:
    """Add Plugins > Particle Segmentation to the ImageJ 1.x menu bar, if there is one."""
    IJ = _j("ij.IJ")
    ij = IJ.getInstance()
    if ij is None:
        return False
    plugins = _j("ij.Menus").getImageJMenu("Plugins")
    if plugins is None:
        return False
    for i in range(plugins.getItemCount()):
        if str(plugins.getItem(i).getLabel()) == MENU_LABEL:
            return True  # a SciJava-scripts menu of the same name (Fiji) or ours
    Menu = _j("java.awt.Menu")
    MenuItem = _j("java.awt.MenuItem")
    sub = Menu(MENU_LABEL)
    for name in COMMAND_NAMES:
        item = MenuItem(name)
        item.addActionListener(ij)
        sub.add(item)
    plugins.add(sub)
    return True


def install_dialog_guard() -> None:
    """Close every modal dialog as soon as it opens and remember its text (headless only).

    Closing a modal dialog from its WINDOW_OPENED event races with ``Dialog.show``: the
    showing thread enters its modal loop only after the window is visible, and a dialog
    disposed before that leaves the thread (and with it the macro and every later ``run``)
    blocked for good, which a loaded machine makes likely. So a sweeper thread disposes each
    closed dialog again (a second ``dispose`` ends a modal loop entered late) for
    ``DIALOG_REDISPOSE_S`` and, while a macro runs (:func:`macro_running`), the most recent
    ones until it ends, however long the showing thread was descheduled; and it closes any
    modal dialog whose opening event was missed.

    The sweeper closes only dialogs that are displayable (have a native window, made after the
    constructor has run): a window is in
    ``Window.getWindows()`` from the start of its constructor, and read from the sweeper's thread a
    dialog still being built can look modal (its modality type not yet set) and showing (its
    visibility not yet seen as cleared), without a title. The sweeper once closed such a dialog,
    the Segment Particles... dialog a macro's command was filling from its options, which
    canceled the command (docs/fiji.md, ``Segment_This_Image.ijm``; 3 times in about 90 runs with
    both cores busy, found from a thread dump taken as it was closed).

    The sweeper never waits on the event thread: ``dispose`` from another thread waits for the
    event thread to run it (``EventQueue.invokeAndWait``), and once, under load, that wait never
    ended while the event thread sat idle, which blocked the sweeper and with it the macro for
    good (tests/fiji/test_fiji_imagej.py, 30 macro errors in a row). So every close and dispose
    from another thread is posted to the event thread (``invokeLater``); the sweeper waits for
    them at most ``DIALOG_SHUT_WAIT_S`` and then posts them again, so one lost on the way
    costs that long, not the run.
    """
    import jpype  # Java: imported on first use, never by importing particleseg.fiji

    if bool(_j("java.awt.GraphicsEnvironment").isHeadless()):
        return  # no window can open (Fiji headless through pyimagej)
    WindowEvent = _j("java.awt.event.WindowEvent")
    Dialog = _j("java.awt.Dialog")
    Window = _j("java.awt.Window")
    EventQueue = _j("java.awt.EventQueue")
    lock = threading.Lock()
    recent: list[tuple[Any, float]] = []  # (dialog, when closed)
    unrun = threading.Condition(lock)  # notified when a posted close has run
    n_unrun = [0]  # closes posted to the event thread and not yet run

    def shut(window, closing: bool) -> None:
        if closing:  # as the window's close box: ImageJ's dialogs then cancel and dispose themselves
            window.dispatchEvent(WindowEvent(window, WindowEvent.WINDOW_CLOSING))
            if not window.isVisible():
                return
        window.dispose()

    @jpype.JImplements("java.lang.Runnable")
    class _Shut:
        def __init__(self, window, closing: bool):
            self.window, self.closing = window, closing

        @jpype.JOverride
        def run(self):
            try:
                shut(self.window, self.closing)
            except Exception:  # noqa: BLE001 - never break the event thread
                pass
            finally:
                with unrun:
                    n_unrun[0] -= 1
                    unrun.notify_all()

    def on_event_thread(window, closing: bool = False) -> None:
        # at once on the event thread; from any other thread posted to it and never waited for
        # (a dialog's dispose, also the one its WINDOW_CLOSING handler calls, would wait)
        if bool(EventQueue.isDispatchThread()):
            shut(window, closing)
        else:
            with lock:
                n_unrun[0] += 1
            EventQueue.invokeLater(_Shut(window, closing))

    def wait_for_the_event_thread(seconds: float) -> None:
        with unrun:
            unrun.wait_for(lambda: n_unrun[0] <= 0, timeout=seconds)

    def close(window) -> None:
        if _state["guard_paused"]:
            return
        with lock:
            if any(w.equals(window) for w, _ in recent):
                return
            recent.append((window, time.monotonic()))
        raw_title = window.getTitle()
        title, text = str(raw_title), dialog_text(window)
        CLOSED_DIALOGS.append((title, text))
        if title != "Macro Error":  # run_macro reports those itself
            # (which dialog, when it has no title)
            what = repr(title) if raw_title else f"without a title ({window.getClass().getName()})"
            sys.stderr.write(f"ImageJ: closed dialog {what} (no user in a headless run): {text}\n")
        on_event_thread(window, closing=True)

    def is_modal_dialog(window) -> bool:
        return isinstance(window, Dialog) and bool(window.isModal())

    @jpype.JImplements("java.awt.event.AWTEventListener")
    class _Guard:
        @jpype.JOverride
        def eventDispatched(self, event):
            try:
                if event.getID() == WindowEvent.WINDOW_OPENED and is_modal_dialog(event.getWindow()):
                    close(event.getWindow())
            except Exception:  # noqa: BLE001 - never break the event thread
                pass

    stop = threading.Event()

    def sweep() -> None:
        while not stop.wait(DIALOG_SWEEP_S):
            # what the last sweep posted has run (a GenericDialog's dispose sleeps 25 ms on the
            # event thread: posting more would queue without end on a loaded machine), or it
            # is posted again after DIALOG_SHUT_WAIT_S
            wait_for_the_event_thread(DIALOG_SHUT_WAIT_S)
            try:
                now = time.monotonic()
                running = _state["macros_running"] > 0
                with lock:
                    recent[:] = [
                        (w, t)
                        for i, (w, t) in enumerate(recent)
                        if now - t < DIALOG_REDISPOSE_S or (running and i >= len(recent) - DIALOG_REDISPOSE_N)
                    ]
                    again = [w for w, _ in recent]
                for window in again:
                    if stop.is_set():  # exiting: no new call into Java (see stop_sweeper)
                        return
                    on_event_thread(window)
                for window in Window.getWindows():
                    if stop.is_set():
                        return
                    # displayable first: a volatile read (Component.peer), after which the
                    # dialog's construction is seen whole
                    if window.isDisplayable() and is_modal_dialog(window) and window.isShowing():
                        close(window)
            except Exception:  # noqa: BLE001 - the JVM shutting down; keep the sweeper quiet
                pass

    guard = _Guard()
    AWTEvent = _j("java.awt.AWTEvent")
    _j("java.awt.Toolkit").getDefaultToolkit().addAWTEventListener(guard, AWTEvent.WINDOW_EVENT_MASK)
    sweeper = threading.Thread(target=sweep, name="particleseg-dialog-guard", daemon=True)
    sweeper.start()

    def stop_sweeper() -> None:
        # before JPype's own exit handler (registered earlier) stops the JVM: a thread still
        # inside Java at that moment aborts the process
        # (a sweeper still inside Java when Python finalizes is ended there by CPython, and
        # JPype's native frames turn that into an abort: wait for it, however loaded the
        # machine; it makes no new Java call once stop is set)
        stop.set()
        sweeper.join(60)
        # and the closes it posted have run: Python code on the event thread while Python
        # finalizes would abort the process as the listener below would (a few seconds at most:
        # an event thread that never runs them cannot be waited for)
        wait_for_the_event_thread(5.0)
        # and before the windows are disposed at exit (environment._dispose_windows): their
        # window events would call this Python listener from the AWT thread while Python
        # finalizes, and a Java thread that Python ends there aborts the process ("FATAL:
        # exception not rethrown"; the aborts seen came from JPype's reference queue, stopped by
        # environment._stop_reference_queue)
        try:
            _j("java.awt.Toolkit").getDefaultToolkit().removeAWTEventListener(guard)
        except Exception:  # noqa: BLE001 - the JVM shutting down
            pass

    atexit.register(stop_sweeper)
    _state["guard"] = guard


@contextlib.contextmanager
def macro_running():
    """Mark a macro as running while the block runs.

    The dialog guard then keeps ending the modal loops of the dialogs it closed until the macro
    returns (see :func:`install_dialog_guard`).
    """
    with _running_lock:
        _state["macros_running"] += 1
    try:
        yield
    finally:
        with _running_lock:
            _state["macros_running"] -= 1


@contextlib.contextmanager
def dialogs_allowed():
    """Let modal dialogs stay open while the block runs.

    For a person, or a test, to answer them in a session with the dialog guard.
    """
    paused = _state["guard_paused"]
    _state["guard_paused"] = True
    try:
        yield
    finally:
        _state["guard_paused"] = paused


def dialog_text(container) -> str:
    """Return the text shown in a dialog: labels, text fields and ImageJ's MultiLineLabels."""
    parts: list[str] = []
    Container = _j("java.awt.Container")
    Button = _j("java.awt.Button")

    def walk(c):
        for comp in c.getComponents():
            name = str(comp.getClass().getName())
            if name == "ij.gui.MultiLineLabel":
                try:
                    f = comp.getClass().getDeclaredField("lines")
                    f.setAccessible(True)
                    parts.extend(str(s) for s in (f.get(comp) or []) if s is not None)
                except Exception:  # noqa: BLE001
                    pass
            elif hasattr(comp, "getText") and not isinstance(comp, Button):
                try:
                    parts.append(str(comp.getText()))
                except Exception:  # noqa: BLE001
                    pass
            if isinstance(comp, Container):
                walk(comp)

    walk(container)
    return " ".join(p.strip() for p in parts if p and p.strip())


# ------------------------------------------------------------------------------------------
# running a command


def run_command(
    name: str, values: dict | None = None, macro_options: str | None = None, imp=None, from_java: bool = False
) -> Any:
    """Run a command from a menu, a macro or a SciJava script.

    From a menu or a macro ``values`` is None: a GenericDialog asks for them, filled from the
    macro options when a macro runs; a SciJava script gives ``values``.

    A key left out of a macro takes its default (the bundle's, for the segmentation
    parameters), check boxes included. The recorder gets the command's line only when it ran
    (a long command from the menu: when it started). Errors are shown the ImageJ way (see
    :func:`report_error`); only a Python caller outside macros and without an ImageJ window
    gets them raised (:class:`CommandError`).
    """
    Macro = _j("ij.Macro")
    Recorder = _j("ij.plugin.frame.Recorder")
    IJ = _j("ij.IJ")
    options = macro_options
    if values is None and options is None:
        opts = Macro.getOptions()
        options = None if opts is None else str(opts)
    macro = options is not None or bool(IJ.isMacro())
    record = values is None and bool(Recorder.record)
    try:
        if record:
            Recorder.setCommand(None)  # recorded below, once the command has run
        normalized = None if options is None else normalize_options(SPECS[name], options)  # unknown keys first
        if name == "Train Model...":
            cmds.training_function()  # says so before asking for parameters
        unit = None
        if SPECS[name].needs_image:
            target = imp if imp is not None else _j("ij.WindowManager").getCurrentImage()
            if target is None:
                raise cmds.InputError("no image open (open an image first, e.g. File > Open...)")  # before any dialog
            unit = cmds.image_calibration(target, name).unit
        spec, defaults = prepare(name, options, macro)
        if values is None:
            if normalized is not None:
                Macro.setOptions(normalized)
            values = show_dialog(spec, defaults, unit, macro)
            if values is None:  # canceled
                if macro:
                    # the macro ends here, as ImageJ ends a macro whose command's dialog was
                    # canceled (GenericDialog.wasCanceled, only on the threads of its macro
                    # runner): one that went on failed later, further from the cause
                    raise cmds.InputError("its dialog was canceled; the macro stops here")
                return None
            if macro:  # a check box left out takes its default, as a number does
                given = given_booleans(spec, options)
                values.update(
                    {
                        f.key: given.get(f.key, bool(defaults.get(f.key, f.default)))
                        for f in spec.fields
                        if f.kind == "bool" and not f.dialog_only
                    }
                )
        else:
            values = {**defaults, **values}
        values = cmds.validate(spec, values)
        if values.get("strict") and SPECS[name].needs_image:
            cmds.image_calibration(target, name, strict=True)  # unusable metadata: an error now
        if not macro:
            _last_values[name] = dict(values)
        ctx = cmds.Context.current(name, macro, PROGRESS_HOOKS)
        if imp is not None:
            ctx.imp = imp
        fn = cmds.IMPLEMENTATIONS[name]
        background = spec.long_running and (
            (not macro and IJ.getInstance() is not None) or (name == "Train Model..." and not values.get("wait"))
        )
        if background:
            t = threading.Thread(
                target=_run_background, args=(name, fn, ctx, values), name=f"particleseg: {name}", daemon=True
            )
            t.start()
            if record:
                record_command(spec, values)
            return t
        with notes_to(publish.log):
            result = fn(ctx, values)
        if record:
            record_command(spec, values)
        return result
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one ImageJ error
        if is_macro_abort(exc):
            raise
        report_error(name, exc, macro=macro, background=from_java)
        return None


def record_command(spec: CommandSpec, values: dict) -> None:
    """Write ``run("COMMAND", "key=value ...");`` to the macro recorder (in its language)."""
    Recorder = _j("ij.plugin.frame.Recorder")
    Recorder.setCommand(spec.name)
    for key, value in recorded_options(spec, values):
        if value is None:
            Recorder.recordOption(key)
        else:
            Recorder.recordOption(key, value)
    Recorder.saveCommand()


def _run_background(name, fn, ctx, values) -> None:
    try:
        with notes_to(publish.log):
            fn(ctx, values)
    except BaseException as exc:  # noqa: BLE001
        if not is_macro_abort(exc):
            try:
                report_error(name, exc, background=True, macro=False)
            except BaseException:  # noqa: BLE001
                pass


def is_macro_abort(exc: BaseException) -> bool:
    """Return whether ``exc`` is the RuntimeException ImageJ throws to unwind an aborted macro (must propagate)."""
    try:
        import jpype  # Java: imported on first use, never by importing particleseg.fiji

        if isinstance(exc, jpype.JException):
            return str(exc.getMessage()) == MACRO_CANCELED
    except ImportError:
        pass
    return False


def error_message(name: str, exc: BaseException) -> str:
    """Return the one-line message of command ``name``'s error ``exc``, starting with the command.

    A :class:`ParticlesegError` gives its own text; anything else is an unexpected error to report.
    """
    if isinstance(exc, ParticlesegError):
        msg = str(exc)
    elif isinstance(exc, KeyboardInterrupt):
        msg = "interrupted"
    else:
        msg = (
            f"unexpected error, please report it: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        )
    return msg if msg.startswith(name) else f"{name}: {msg}"


def report_error(name: str, exc: BaseException, background: bool = False, macro: bool | None = None) -> None:
    """Show an error the ImageJ way.

    Abort the running macro with the message, or show an error dialog in the GUI; headless
    outside a macro, log it and (for a Python caller, not ``background``) raise
    :class:`CommandError`.
    """
    IJ = _j("ij.IJ")
    message = error_message(name, exc)
    if not isinstance(exc, (ParticlesegError, KeyboardInterrupt)):
        IJ.log(f"{message}\n" + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip())
    if macro is None:
        macro = bool(IJ.isMacro())
    if macro:
        IJ.error(name, message)  # aborts the macro: raises "Macro canceled" through us
        return
    if IJ.getInstance() is not None:
        IJ.error(name.rstrip("."), message[len(name) + 2 :] if message.startswith(name + ": ") else message)
        return
    IJ.log(message)
    if not background:
        raise CommandError(message) from None


# ------------------------------------------------------------------------------------------
# dialogs


def prepare(name: str, options: str | None, macro: bool) -> tuple[CommandSpec, dict]:
    """Return the command's spec and the values its dialog starts from.

    The spec has the model list and the chosen bundle's defaults; the values are the last used
    ones in the GUI and the defaults in macros.
    """
    spec = SPECS[name]
    if "model" not in spec.keys:
        defaults = {f.key: f.default for f in spec.fields if f.kind != "message"}
        if not macro and name in _last_values:
            defaults.update(_last_values[name])
        return spec, defaults
    last = _last_values.get(name, {}) if not macro else {}
    if options is not None:
        model = str(parse_macro_options(options).get("model", "default"))
    else:
        model = str(last.get("model", _last_values.get("Segment Particles...", {}).get("model", "default")))
    models = list(list_bundles()) or ["default"]
    if "default" not in models:
        models.insert(0, "default")
    if model not in models:
        models.append(model)
    try:
        defaults_of_bundle = bundle_defaults(cmds.get_bundle(model))
    except ParticlesegError:
        if macro:
            raise  # an unknown model in a macro is an error now
        defaults_of_bundle = {}
    spec = build_specs(model, models, defaults_of_bundle)[name]
    defaults = {f.key: f.default for f in spec.fields if f.kind != "message"}
    defaults.update({k: v for k, v in last.items() if k in defaults and k != "model"})
    return spec, defaults


def show_dialog(spec: CommandSpec, defaults: dict, unit: str | None = None, macro: bool = False) -> dict | None:
    """Show the command's GenericDialog and return the values by key; None when canceled.

    In a macro ImageJ fills the dialog from the macro options.

    Commands with many parameters have a compact main dialog and a second, "advanced" one
    (as StarDist's Fiji plugin): it opens when its check box is ticked, and in a macro it is
    always read (from the same option string), so every parameter can be given in one line.
    """
    main = [f for f in spec.fields if not f.advanced]
    advanced = [f for f in spec.fields if f.advanced]
    values = _dialog(spec.name.rstrip("."), spec, main, defaults, unit)
    if values is None:
        return None
    if advanced:
        if macro or values.get(ADVANCED):
            more = _dialog(spec.name.rstrip(".") + " (advanced)", spec, advanced, defaults, unit)
            if more is None:
                return None
            values.update(more)
        else:
            values.update({f.key: defaults.get(f.key, f.default) for f in advanced})
    values.pop(ADVANCED, None)
    return values


def _dialog(title: str, spec: CommandSpec, fields: list, defaults: dict, unit: str | None) -> dict | None:
    GenericDialog = _j("ij.gui.GenericDialog")
    WindowManager = _j("ij.WindowManager")
    gd = GenericDialog(title)
    if not fields:
        return {}
    titles = [str(t) for t in (WindowManager.getImageTitles() or [])]
    current = WindowManager.getCurrentImage()
    i = 0
    while i < len(fields):
        f = fields[i]
        d = defaults.get(f.key, f.default)
        label = f.label_for(unit)
        if f.same_row and i > 0:
            gd.addToSameRow()
        if f.kind == "bool" and f.group:
            group = [f]
            while i + len(group) < len(fields) and fields[i + len(group)].group == f.group:
                group.append(fields[i + len(group)])
            columns = min(len(group), 4)
            rows = -(-len(group) // columns)
            gd.addCheckboxGroup(
                rows, columns, [g.label for g in group], [bool(defaults.get(g.key, g.default)) for g in group]
            )
            i += len(group)
            continue
        if f.kind == "number":
            gd.addNumericField(label, float(d), _digits(float(d), f.digits))
        elif f.kind == "int":
            gd.addNumericField(label, float(d), 0)
        elif f.kind == "bool":
            gd.addCheckbox(label, bool(d))
        elif f.kind in ("string", "range"):
            gd.addStringField(label, str(d), f.columns or 12)
        elif f.kind == "dir":
            gd.addDirectoryField(label, str(d or ""), 28)
        elif f.kind == "choice":
            choices = list(f.choices)
            if str(d) not in choices:
                choices.append(str(d))
            gd.addChoice(label, choices, str(d))
        elif f.kind == "image":
            choices = ([NONE] if f.optional else []) + titles
            if not choices:
                choices = [NONE]
            if str(d) in choices:
                default = str(d)
            elif not f.optional and current is not None and str(current.getTitle()) in choices:
                default = str(current.getTitle())
            else:
                default = choices[0]
            gd.addChoice(label, choices, default)
        elif f.kind == "message":
            gd.addMessage(f.label)
        i += 1
    gd.addHelp(_help_html(spec))
    gd.showDialog()
    if gd.wasCanceled():
        return None
    values: dict[str, Any] = {}
    for f in fields:
        if f.kind in ("number", "int"):
            values[f.key] = float(gd.getNextNumber())
        elif f.kind == "bool":
            values[f.key] = bool(gd.getNextBoolean())
        elif f.kind in ("string", "range", "dir"):
            values[f.key] = str(gd.getNextString()).strip()
        elif f.kind in ("choice", "image"):
            values[f.key] = str(gd.getNextChoice())
    if gd.invalidNumber():
        raise cmds.InputError(f"{spec.name}: {gd.getErrorMessage() or 'invalid number'}")
    return values


def _digits(value: float, at_least: int) -> int:
    """Decimals that show ``value`` exactly (a bundle's 0.925 must not become 0.93 on OK)."""
    for n in range(at_least, 7):
        if abs(round(value, n) - value) < 1e-12:
            return n
    return 6


def _help_html(spec: CommandSpec) -> str:
    rows = "".join(
        f"<tr><td><tt>{f.key}</tt></td><td>{f.help or f.label.replace('_', ' ')}</td></tr>" for f in spec.parameters
    )
    return (
        f"<html><h3>{spec.name}</h3><p>{spec.help}</p>"
        f"<table>{rows}</table><p>See docs/fiji.md of particleseg.</p></html>"
    )
