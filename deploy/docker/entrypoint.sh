#!/bin/sh
exec /agent/bin/oz "$@"
