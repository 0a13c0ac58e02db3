# Sourced by /etc/profile in login shells (KubeRay starts Ray with `bash -lc`), after Debian's /etc/profile
# has reset PATH: put the mammoflow venv back in front so that `ray` and `mammoflow` resolve to it.
case ":${PATH}:" in
  *:/opt/venv/bin:*) ;;
  *) PATH="/opt/venv/bin:${PATH}"; export PATH ;;
esac
