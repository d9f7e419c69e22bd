from jackin_remote.cli import main

main()
