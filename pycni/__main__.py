from pycni.main import main

main()
